"""The one sequential, layer-by-layer calibration engine shared by every calibrated compressor.

The loop follows the reference implementations (locuslab/wanda ``lib/prune.py``, IST-DASLab
``gptq``/``sparsegpt`` ``llama.py``):

1. capture the input hidden states of the first decoder block for every calibration sample, together
   with every keyword argument the blocks receive (``position_embeddings``, ``attention_mask``,
   ``position_ids``, ``cache_position``...). Keyword arguments are recorded *per block* with forward
   pre-hooks (``with_kwargs=True``) during the forward of the first sample, so models whose blocks get
   different masks (sliding-window layers of Qwen2/Mistral/Gemma) are handled; caches are dropped and
   ``use_cache`` is forced off. A private exception stops the forward early.
2. for each block of the targeted layer range: hooks on its targeted Linear layers hand every input to a
   :class:`Method` (``add_batch``), the block runs over all samples, the Method compresses each Linear
   (``compress_layer``), then the block runs again so that the next block sees the *compressed* outputs
   (``propagate=True``, as in the references). With ``propagate=False`` the next block gets the dense
   outputs of the statistics pass instead.

Blocks before the targeted range are only run forward. Calibration activations live on the model's
device unless they are large (more than ``OFFLOAD_BYTES``), then on CPU and moved one sample at a time.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from lcc import ConfigError
from lcc.compressors.base import Targets, decoder_layers

log = logging.getLogger(__name__)

#: Above this many bytes of calibration activations (one copy), they are kept on CPU.
OFFLOAD_BYTES = 2 << 30

#: Keyword arguments of a decoder block that must not be replayed (KV caches).
_CACHE_KWARGS = ("past_key_value", "past_key_values", "layer_past", "cache")


class _Stop(Exception):
    """Raised by a capture hook to end the model's forward once the needed inputs are recorded."""


class Method:
    """Callbacks the engine drives, one instance per compression job.

    ``add_batch(name, linear, inp)`` receives the input of the targeted Linear ``name`` (qualified,
    ``layers.3.mlp.down_proj``) for one calibration sample, shape [..., in_features].
    ``compress_layer(name, linear)`` then changes ``linear`` in place, frees the statistics of ``name``
    and returns a dict of facts.
    """

    def add_batch(self, name: str, linear: nn.Linear, inp: torch.Tensor) -> None:
        raise NotImplementedError

    def compress_layer(self, name: str, linear: nn.Linear) -> dict[str, Any]:
        raise NotImplementedError


class NormStats(Method):
    """Sum of squares of every input channel over all calibration tokens (Wanda's ``scaler_row``)."""

    def __init__(self):
        self.sq: dict[str, torch.Tensor] = {}

    def add_batch(self, name, linear, inp):
        x = inp.reshape(-1, inp.shape[-1]).float()
        acc = self.sq.get(name)
        s = (x * x).sum(0)
        self.sq[name] = s if acc is None else acc + s

    def pop_norms(self, name: str) -> torch.Tensor:
        """‖X_j‖₂ over every calibration token of input channel j (fp32, length in_features)."""
        return self.sq.pop(name).sqrt()


class HessianStats(Method):
    """H = 2/n · Σ x xᵀ over the n calibration tokens, accumulated in fp32 (GPTQ/SparseGPT)."""

    def __init__(self):
        self.H: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}

    def add_batch(self, name, linear, inp):
        x = inp.reshape(-1, inp.shape[-1]).float()
        if name not in self.H:
            self.H[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
            self.count[name] = 0
        self.H[name].addmm_(x.t(), x)
        self.count[name] += x.shape[0]

    def pop_hessian(self, name: str) -> torch.Tensor:
        n = max(self.count.pop(name), 1)
        return self.H.pop(name).mul_(2.0 / n)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _clean_kwargs(kwargs: dict) -> dict:
    kw = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS and k != "hidden_states"}
    if "use_cache" in kw:
        kw["use_cache"] = False
    return kw


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def capture_inputs(model: nn.Module, calib: torch.Tensor, stop_at: int | None = None
                   ) -> tuple[list[torch.Tensor], list[tuple[tuple, dict]]]:
    """Inputs of block 0 for every sample ([1, seqlen, hidden] each) and, for blocks 0..stop_at-1, the
    (extra positional args, keyword args) they receive. ``stop_at`` defaults to all blocks."""
    layers = decoder_layers(model)
    n_layers = len(layers) if stop_at is None else max(1, min(stop_at, len(layers)))
    emb = model.get_input_embeddings()
    dev = emb.weight.device if emb is not None else _device_of(model)
    if calib.dim() != 2:
        raise ConfigError(f"calibration batch must be [n_samples, seqlen], got shape {tuple(calib.shape)}")
    n, seqlen = calib.shape
    hidden = getattr(getattr(model, "config", None), "hidden_size", 0) or 0
    dtype = next(model.parameters()).dtype
    nbytes = n * seqlen * hidden * torch.tensor([], dtype=dtype).element_size()
    store = torch.device("cpu") if (dev.type != "cpu" and nbytes > OFFLOAD_BYTES) else dev

    inps: list[torch.Tensor] = []
    layer_args: list[tuple[tuple, dict] | None] = [None] * n_layers
    state = {"first": True}

    def make_hook(i):
        def hook(module, args, kwargs):
            if i == 0:
                h = args[0] if args else kwargs["hidden_states"]
                inps.append(h.detach().to(store))
                if not state["first"]:
                    raise _Stop
            if state["first"]:
                layer_args[i] = (tuple(args[1:]), _clean_kwargs(kwargs))
                if i == n_layers - 1:
                    raise _Stop
        return hook

    handles = [layers[i].register_forward_pre_hook(make_hook(i), with_kwargs=True) for i in range(n_layers)]
    try:
        for s in range(n):
            try:
                model(input_ids=calib[s:s + 1].to(dev), use_cache=False)
            except _Stop:
                pass
            state["first"] = False
    finally:
        for h in handles:
            h.remove()
    if len(inps) != n or any(a is None for a in layer_args):
        raise RuntimeError("calibration capture failed: the decoder blocks were not all reached")
    return inps, layer_args  # type: ignore[return-value]


def _run_block(layer: nn.Module, inps: list[torch.Tensor], args: tuple, kwargs: dict, dev: torch.device,
               keep: bool) -> list[torch.Tensor] | None:
    outs = [] if keep else None
    for x in inps:
        store = x.device
        out = layer(x.to(dev), *args, **kwargs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if keep:
            outs.append(out.detach().to(store))
    return outs


@torch.no_grad()
def run_sequential(model: nn.Module, calib: torch.Tensor, targets: Targets, method: Method,
                   propagate: bool = True, desc: str = "calibrating") -> dict[str, dict[str, Any]]:
    """Drive ``method`` over the targeted Linear layers block by block. Returns ``{qualified name: facts}``."""
    from tqdm.auto import tqdm

    if calib is None:
        raise ConfigError("this compressor needs calibration data (calib is None)")
    if targets.lm_head:
        raise ConfigError("targets.lm_head=true is not supported by calibrated compressors "
                          "(the engine walks the decoder blocks); valid: lm_head=false")
    layers = decoder_layers(model)
    rng = targets.layer_range(len(layers))
    if len(rng) == 0:
        return {}
    was_training = model.training
    model.eval()
    inps, layer_args = capture_inputs(model, calib, stop_at=rng.stop)
    facts: dict[str, dict[str, Any]] = {}
    moved: dict[tuple[int, str], tuple[tuple, dict]] = {}
    try:
        for i in tqdm(range(rng.stop), desc=desc, leave=False):
            layer = layers[i]
            dev = _device_of(layer)
            key = (i, str(dev))
            if key not in moved:
                moved[key] = _to(layer_args[i], dev)
            args, kw = moved[key]
            last = i == rng.stop - 1
            if i < rng.start:
                inps = _run_block(layer, inps, args, kw, dev, keep=True)
                continue
            lins = targets.linears(layer)
            handles = []
            for name, lin in lins.items():
                qname = f"layers.{i}.{name}"

                def hook(mod, inp, out, qname=qname):
                    method.add_batch(qname, mod, inp[0].detach())
                handles.append(lin.register_forward_hook(hook))
            try:
                outs = _run_block(layer, inps, args, kw, dev, keep=not (propagate and lins) and not last)
            finally:
                for h in handles:
                    h.remove()
            for name, lin in lins.items():
                qname = f"layers.{i}.{name}"
                facts[qname] = method.compress_layer(qname, lin) or {}
            if propagate and lins and not last:
                outs = _run_block(layer, inps, args, kw, dev, keep=True)
            inps = outs
    finally:
        model.train(was_training)
    return facts


def calibration_batch(cfg_calib: Any, tokenizer: Any) -> torch.LongTensor:
    """``n_samples`` random windows of ``seqlen`` tokens from the calibration stream, seeded by ``seed``.

    ``cfg_calib`` is a ``calib`` config (``data``, ``n_samples``, ``seqlen``, ``seed``); the stream comes
    from ``lcc.data.token_stream(cfg_calib.data, tokenizer)`` (a 1-D LongTensor)."""
    from lcc.data import token_stream

    get = cfg_calib.get if hasattr(cfg_calib, "get") else (lambda k, d=None: getattr(cfg_calib, k, d))
    n, seqlen, seed = int(get("n_samples", 128)), int(get("seqlen", 2048)), int(get("seed", 0))
    if n < 1:
        raise ConfigError(f"calib.n_samples={n} is invalid; valid: a positive integer")
    if seqlen < 1:
        raise ConfigError(f"calib.seqlen={seqlen} is invalid; valid: a positive integer")
    stream = torch.as_tensor(token_stream(get("data"), tokenizer)).long().flatten()
    if stream.numel() < seqlen:
        name = get("data", {}).get("name", "?") if hasattr(get("data", {}), "get") else "?"
        raise ConfigError(f"calib.seqlen={seqlen} is longer than the calibration stream {name!r} "
                          f"({stream.numel()} tokens); lower calib.seqlen or choose a larger calib.data")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seqlen + 1, (n,), generator=g)
    return torch.stack([stream[s:s + seqlen] for s in starts.tolist()])


# ---- shared OBS machinery (SparseGPT, GPTQ) ---------------------------------------------------------
def prepare_hessian(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Dead inputs (zero diagonal: never active in calibration) get H_jj = 1 and their weights zeroed,
    as in the references. Modifies ``W`` and ``H`` in place; returns the dead mask."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return dead


def inverse_hessian_upper(H: torch.Tensor, percdamp: float, name: str = "", max_tries: int = 8
                          ) -> tuple[torch.Tensor, int, float]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = percdamp·mean(diag H), the matrix both OBS
    methods walk column by column. When a factorisation fails (singular or indefinite H, fp32
    round-off) λ is multiplied by 10 (starting from 0.01·mean diag if percdamp is 0) and the
    factorisation retried; every retry is logged with ``logging.warning``.

    Returns (Hinv_upper, number of retries, final percdamp)."""
    mean_diag = torch.mean(torch.diag(H)).item()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    damp = float(percdamp)
    for attempt in range(max_tries):
        Hd = H + (damp * mean_diag) * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if info.item() == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info2.item() == 0 and torch.isfinite(U).all():
                return U, attempt, damp
        new = damp * 10 if damp > 0 else 0.01
        log.warning("Cholesky of the Hessian of %s failed with percdamp=%g; retrying with percdamp=%g",
                    name or "a layer", damp, new)
        damp = new
    raise RuntimeError(f"Cholesky of the Hessian of {name or 'a layer'} failed even with percdamp={damp:g}")
