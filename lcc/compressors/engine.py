"""The one sequential, layer-by-layer calibration engine, and :class:`Calibrated`, the base of every
calibrated compressor: a calibrated method is its input statistics (``stats``: :class:`NormStats`,
:class:`HessianStats`) and its per-layer rule (``compress_layer``); ``Calibrated.compress`` runs the engine.

The loop follows the reference implementations (locuslab/wanda ``lib/prune.py``, IST-DASLab
``gptq``/``sparsegpt`` ``llama.py``):

1. capture the input hidden states of the first decoder block for every calibration sample, together
   with every keyword argument the blocks receive (``position_embeddings``, ``attention_mask``,
   ``position_ids``, ``cache_position``...). Keyword arguments are recorded *per block* with forward
   pre-hooks (``with_kwargs=True``) during the forward of the first sample, so models whose blocks get
   different masks (sliding-window layers of Qwen2/Mistral/Gemma) are handled; caches are dropped and
   ``use_cache`` is forced off. A private exception stops the forward early.
2. for each block of the targeted layer range: hooks on its targeted Linear layers hand every input to the
   statistics (``Stats.add_batch``), the block runs over all samples, the rule compresses each Linear from
   its statistic (``rule(name, linear, stats.pop(name))``), then the block runs again so that the next
   block sees the *compressed* outputs (``propagate=True``, as in the references). With ``propagate=False``
   the next block gets the dense outputs of the statistics pass instead.

Blocks before the targeted range are only run forward. Calibration activations live on the model's
device unless they are large (more than ``OFFLOAD_BYTES``), then on CPU and moved one sample at a time.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from lcc import ConfigError
from lcc.compressors.base import Compressor, Targets, decoder_layers, param, target_linears

log = logging.getLogger(__name__)

#: Above this many bytes of calibration activations (one copy), they are kept on CPU.
OFFLOAD_BYTES = 2 << 30

#: Keyword arguments of a decoder block that must not be replayed (KV caches).
_CACHE_KWARGS = ("past_key_value", "past_key_values", "layer_past", "cache")


class _Stop(Exception):
    """Raised by a capture hook to end the model's forward once the needed inputs are recorded."""


class Stats:
    """Statistics of the inputs of every targeted Linear, accumulated over the calibration samples.

    ``add_batch(name, inp)`` receives the input of the Linear ``name`` (qualified, ``layers.3.mlp.down_proj``)
    for one calibration sample, shape [..., in_features]; ``pop(name)`` returns its statistic and frees it."""

    def add_batch(self, name: str, inp: torch.Tensor) -> None:
        raise NotImplementedError

    def pop(self, name: str) -> torch.Tensor:
        raise NotImplementedError


class NormStats(Stats):
    """Sum of squares of every input channel over all calibration tokens (Wanda's ``scaler_row``);
    ``pop`` gives ‖X_j‖₂ over every calibration token of input channel j (fp32, length in_features)."""

    def __init__(self):
        self.sq: dict[str, torch.Tensor] = {}

    def add_batch(self, name, inp):
        x = inp.reshape(-1, inp.shape[-1]).float()
        acc = self.sq.get(name)
        s = (x * x).sum(0)
        self.sq[name] = s if acc is None else acc + s

    def pop(self, name: str) -> torch.Tensor:
        return self.sq.pop(name).sqrt()


class HessianStats(Stats):
    """H = 2/n · Σ x xᵀ over the n calibration tokens, accumulated in fp32 (GPTQ/SparseGPT)."""

    def __init__(self):
        self.H: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}

    def add_batch(self, name, inp):
        x = inp.reshape(-1, inp.shape[-1]).float()
        if name not in self.H:
            self.H[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
            self.count[name] = 0
        self.H[name].addmm_(x.t(), x)
        self.count[name] += x.shape[0]

    def pop(self, name: str) -> torch.Tensor:
        n = max(self.count.pop(name), 1)
        return self.H.pop(name).mul_(2.0 / n)


#: ``rule(name, linear, statistic) -> facts``: compress one Linear in place from its input statistic
Rule = Callable[[str, nn.Linear, Any], "dict[str, Any] | None"]


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
def run_sequential(model: nn.Module, calib: torch.Tensor, targets: Targets, stats: Stats, rule: Rule,
                   propagate: bool = True, desc: str = "calibrating") -> dict[str, dict[str, Any]]:
    """Feed ``stats`` the inputs of the targeted Linear layers block by block and compress each with
    ``rule(name, linear, stats.pop(name))``. Returns ``{qualified name: facts}``."""
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
                    stats.add_batch(qname, inp[0].detach())
                handles.append(lin.register_forward_hook(hook))
            try:
                outs = _run_block(layer, inps, args, kw, dev, keep=not (propagate and lins) and not last)
            finally:
                for h in handles:
                    h.remove()
            for name, lin in lins.items():
                qname = f"layers.{i}.{name}"
                facts[qname] = rule(qname, lin, stats.pop(qname)) or {}
            if propagate and lins and not last:
                outs = _run_block(layer, inps, args, kw, dev, keep=True)
            inps = outs
    finally:
        model.train(was_training)
    return facts


class Calibrated(Compressor):
    """Base of the calibrated compressors. A subclass gives its statistics (``stats``, a :class:`Stats` class)
    and its per-layer rule (``compress_layer``), and optionally ``check_linears`` (before anything runs) and
    ``facts`` (the job's facts from the per-layer ones); ``compress`` runs the sequential engine once.
    A subclass whose configuration needs no data (``needs_calibration()`` False, e.g. ``mixed`` with
    ``max_abs``) gets its rule applied to every targeted Linear with the statistic ``None``."""

    stats: ClassVar[type[Stats]] = NormStats
    propagate: bool = param(True, "next block calibrates on the compressed block's outputs (false: on the "
                                  "dense outputs)")

    def needs_calibration(self) -> bool:
        return True

    def compress_layer(self, name: str, linear: nn.Linear, stat: torch.Tensor | None) -> dict[str, Any]:
        """Compress ``linear`` in place from its input statistic; return facts of this layer."""
        raise NotImplementedError

    def check_linears(self, lins: dict[str, nn.Linear]) -> None:
        """Raise ConfigError if a targeted Linear cannot be compressed (checked before the engine runs)."""

    def facts(self, lins: dict[str, nn.Linear], layer_facts: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The facts of the job from the targeted Linears (compressed) and the per-layer facts."""
        return {"n_linears": len(lins)}

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        self.check_linears(lins)
        self.clear_grids()
        if self.needs_calibration():
            layer_facts = run_sequential(model, calib, self.targets, self.stats(), self.compress_layer,
                                         propagate=self.propagate, desc=self.name)
        else:
            layer_facts = {n: self.compress_layer(n, lin, None) or {} for n, lin in lins.items()}
        return self.facts(lins, layer_facts)
