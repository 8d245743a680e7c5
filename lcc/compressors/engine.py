"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

The one sequential, layer-by-layer calibration engine, and :class:`Calibrated`, the base of every
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
2. for each block of the targeted layer range: hooks on its targeted Linear layers hand their inputs to the
   statistics (``Stats.add_batch``), the block runs over all samples, in batches of samples (``batch_size``,
   chosen from memory), then each Linear is compressed from its statistic, then the block runs again so
   that the next block sees the *compressed* outputs (``propagate=True``, as in the references). With
   ``propagate=False`` the next block gets the dense outputs of the statistics pass instead.
3. Linears that receive the *same input tensor* (q/k/v, gate/up in Llama) are found during the first batch of
   the statistics pass (same storage, shape and strides, not by module names) and form one *group*: one
   statistic is accumulated for the group (``share_inputs=True``) and handed to the group rule
   ``group_rule(names, linears, stat)`` (default: ``rule(name, linear, stat)`` for each member, the
   statistic read-only), which lets GPTQ/SparseGPT walk the members' stacked rows once.

Blocks before the targeted range are only run forward. Calibration activations live on the model's
device unless they are large (more than ``OFFLOAD_BYTES``), then on CPU and moved one batch at a time.

Switches for comparisons (numbers equal to float rounding either way): ``LCC_CALIB_BATCH`` (samples per block
forward; 0 or unset: chosen from memory), ``LCC_SHARE_INPUTS=0`` (one statistic per Linear, as before).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from lcc import ConfigError
from lcc.compressors.base import Compressor, Targets, decoder_layers, param, target_linears

log = logging.getLogger(__name__)

#: Above this many bytes of calibration activations (one copy), they are kept on CPU.
OFFLOAD_BYTES = 2 << 30

#: Memory budget of one batch of block activations: this fraction of the free device memory (CUDA) ...
BATCH_MEM_FRACTION = 0.25
#: ... or this many bytes on a CPU (larger batches gain little there)
BATCH_CPU_BYTES = 1 << 30
#: At most this many samples per block forward
MAX_BATCH = 64

#: Keyword arguments of a decoder block that must not be replayed (KV caches).
_CACHE_KWARGS = ("past_key_value", "past_key_values", "layer_past", "cache")


class _Stop(Exception):
    """Raised by a capture hook to end the model's forward once the needed inputs are recorded."""


class Stats:
    """Statistics of the inputs of every targeted Linear, accumulated over the calibration samples.

    ``add_batch(name, inp)`` receives the input of the Linear ``name`` (qualified, ``layers.3.mlp.down_proj``)
    for one batch of calibration samples, shape [batch, seqlen, in_features]; ``pop(name)`` returns its
    statistic and frees it. With shared inputs, ``name`` is the first Linear of its group."""

    def add_batch(self, name: str, inp: torch.Tensor) -> None:
        raise NotImplementedError

    def pop(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def has(self, name: str) -> bool:
        """Whether ``name`` received any input (an MoE expert that no calibration token is routed to has none);
        a statistic that does not say is assumed to have it."""
        return True

    def identity(self, width: int, device: torch.device) -> torch.Tensor:
        """The statistic of a Linear that received no calibration token (:data:`NO_TOKENS_RULE`)."""
        raise NotImplementedError


#: what a calibrated compressor does with a Linear (an MoE expert) that no calibration token reached; recorded in
#: the job's facts (``no_calibration_tokens``) with the names of those Linears
NO_TOKENS_RULE = ("identity statistic (every input channel norm 1, H = I): wanda prunes by |W| per row, sparsegpt "
                  "and gptq walk with H = I (gptq then equals RTN on its grid), mixed ranks by |W|")


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

    def has(self, name: str) -> bool:
        return name in self.sq

    def identity(self, width, device):
        return torch.ones(width, dtype=torch.float32, device=device)


class HessianStats(Stats):
    """H = 2/n · Σ x xᵀ over the n calibration tokens, accumulated in fp32 (GPTQ/SparseGPT); bf16/fp16 inputs
    on CUDA multiply in their own precision with fp32 accumulation and output (:func:`xtx_add`)."""

    def __init__(self):
        self.H: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}

    def add_batch(self, name, inp):
        x = inp.reshape(-1, inp.shape[-1])
        if name not in self.H:
            self.H[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
            self.count[name] = 0
        self.H[name] = xtx_add(self.H[name], x)
        self.count[name] += x.shape[0]

    def pop(self, name: str) -> torch.Tensor:
        n = max(self.count.pop(name), 1)
        return self.H.pop(name).mul_(2.0 / n)

    def has(self, name: str) -> bool:
        return name in self.H

    def identity(self, width, device):
        return torch.eye(width, dtype=torch.float32, device=device)


def low_precision_gemm(x: torch.Tensor) -> bool:
    """True where Σ xxᵀ of ``x`` runs as a bf16/fp16 GEMM accumulating and writing fp32 (CUDA, a torch with
    ``addmm(..., out_dtype=)``): products of bf16/fp16 values are exact in fp32, so it equals the fp32 upcast
    up to summation order, without the fp32 copy of x and at the bf16 tensor-core rate.
    ``LCC_HESSIAN_FP32=1`` forces the upcast."""
    return (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and hasattr(torch.ops.aten.addmm, "dtype")
            and _OUT_DTYPE_WORKS.get(x.dtype) is not False and os.environ.get("LCC_HESSIAN_FP32", "0") != "1")


#: dtype -> whether ``addmm(..., out_dtype=float32)`` ran (False after a failure: the fp32 path from then on)
_OUT_DTYPE_WORKS: dict[torch.dtype, bool] = {}


def xtx_add(H: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """H + xᵀx for x [n, d] (H fp32 [d, d]); in place on the fp32 path."""
    if low_precision_gemm(x):
        try:
            out = torch.addmm(H, x.t(), x, out_dtype=torch.float32)
            _OUT_DTYPE_WORKS[x.dtype] = True
            return out
        except (RuntimeError, TypeError) as e:  # e.g. a build without this kernel: the fp32 upcast
            _OUT_DTYPE_WORKS[x.dtype] = False
            log.warning("%s GEMM with fp32 output failed (%s); Hessians use the fp32 upcast", x.dtype, e)
    x = x.float()
    return H.addmm_(x.t(), x)


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
               keep: bool, batch: int = 1) -> list[torch.Tensor] | None:
    """Run ``layer`` over every sample, ``batch`` samples per forward; the outputs (one [1, seqlen, hidden]
    tensor per sample, where its input was stored) if ``keep``."""
    outs = [] if keep else None
    for s in range(0, len(inps), batch):
        part = inps[s:s + batch]
        store = part[0].device
        x = part[0].to(dev) if len(part) == 1 else torch.cat([p.to(dev) for p in part])
        out = layer(x, *args, **kwargs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if keep:
            outs.extend(o.detach().to(store) for o in out.split(1))
    return outs


def sample_bytes(model: nn.Module, seqlen: int, dtype: torch.dtype) -> int:
    """Rough bytes of the activations of one sample through one block: the MLP's gate/up/product and their
    fp32 copies for the statistics, the attention's q/k/v/o, and an eager attention's score matrix."""
    cfg = getattr(model, "config", None)
    hidden = getattr(cfg, "hidden_size", 0) or 0
    inter = getattr(cfg, "intermediate_size", 0) or 4 * hidden
    heads = getattr(cfg, "num_attention_heads", 0) or 1
    el = torch.tensor([], dtype=dtype).element_size()
    per_token = el * (6 * hidden + 3 * inter) + 4 * (hidden + inter)
    scores = 0 if getattr(cfg, "_attn_implementation", "eager") in ("sdpa", "flash_attention_2") \
        else 2 * heads * seqlen * 4
    return seqlen * (per_token + scores)


def choose_batch(model: nn.Module, n: int, seqlen: int, dev: torch.device, override: int | None = None) -> int:
    """Samples per block forward: ``override`` (or ``LCC_CALIB_BATCH``) if given, else as many as fit in
    ``BATCH_MEM_FRACTION`` of the free GPU memory (``BATCH_CPU_BYTES`` on a CPU), at most ``MAX_BATCH``."""
    if override is None:
        override = int(os.environ.get("LCC_CALIB_BATCH", "0") or 0)
    if override > 0:
        return max(1, min(override, n))
    dtype = next(model.parameters()).dtype
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        budget = int(free * BATCH_MEM_FRACTION)
    else:
        budget = BATCH_CPU_BYTES
    return max(1, min(n, MAX_BATCH, budget // max(sample_bytes(model, seqlen, dtype), 1)))


def batch_broadcasts(layer: nn.Module, inps: list[torch.Tensor], args: tuple, kwargs: dict,
                     dev: torch.device) -> bool:
    """True if the block's captured arguments (recorded for one sample: position embeddings, mask, cache
    position...) serve a batch of samples: two samples run together equal them run one at a time."""
    if len(inps) < 2:
        return True
    try:
        both = _run_block(layer, inps[:2], args, kwargs, dev, keep=True, batch=2)
    except (RuntimeError, ValueError, IndexError) as e:
        log.info("calibration runs one sample at a time: a batch of 2 failed (%s)", e)
        return False
    one = _run_block(layer, inps[:2], args, kwargs, dev, keep=True, batch=1)
    tol = 1e-2 if one[0].dtype in (torch.bfloat16, torch.float16) else 1e-4
    for a, b in zip(both, one):
        a, b = a.float(), b.float()
        if a.shape != b.shape or (a - b).norm() > tol * b.norm().clamp_min(1e-12):
            log.info("calibration runs one sample at a time: a batch of 2 differs from single samples")
            return False
    return True


#: ``group_rule(names, linears, statistic) -> {name: facts}``: compress the Linears that share one input
GroupRule = Callable[[list, list, Any], "dict[str, dict[str, Any]]"]


class _Grouper:
    """Forward hooks on a block's targeted Linears that hand their inputs to ``stats``, and find the Linears
    receiving the same input tensor during the first batch (same storage, shape, strides and dtype: the tensors
    seen are held until the batch ends, so no other tensor can reuse their memory meanwhile). Afterwards
    only the first Linear of each group (its *leader*) feeds the statistics."""

    def __init__(self, lins: dict[str, nn.Linear], prefix: str, stats: Stats, share: bool):
        self.stats, self.share, self.prefix = stats, share, prefix
        self.leader: dict[str, str] = {}
        self.seen: dict[tuple, tuple[str, torch.Tensor]] | None = {}
        self.handles = [lin.register_forward_hook(self._hook(f"{prefix}{n}")) for n, lin in lins.items()]

    def _hook(self, qname):
        def hook(mod, inp, out):
            x = inp[0]
            if self.seen is not None:  # first batch: find the groups
                key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device) if self.share else qname
                lead = self.seen.setdefault(key, (qname, x))[0]
                self.leader.setdefault(qname, lead)
            if self.leader.setdefault(qname, qname) == qname:  # first seen after the first batch: its own leader
                self.stats.add_batch(qname, x.detach())
        return hook

    def first_batch_done(self) -> None:
        self.seen = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.seen = None

    def groups(self, names: list[str]) -> list[list[str]]:
        """Groups of the (block-relative) ``names``, in module order of their leaders."""
        out: dict[str, list[str]] = {}
        for n in names:
            q = self.prefix + n
            out.setdefault(self.leader.get(q, q), []).append(n)
        return list(out.values())


def _share_default() -> bool:
    return os.environ.get("LCC_SHARE_INPUTS", "1") != "0"


@torch.no_grad()
def run_sequential(model: nn.Module, calib: torch.Tensor, targets: Targets, stats: Stats, rule: Rule,
                   propagate: bool = True, desc: str = "calibrating", group_rule: GroupRule | None = None,
                   share_inputs: bool | None = None, batch_size: int | None = None,
                   no_tokens: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Feed ``stats`` the inputs of the targeted Linear layers block by block and compress them: each group of
    Linears sharing one input with ``group_rule(names, linears, stats.pop(leader))`` if given, else each
    member with ``rule(name, linear, stat)``. ``share_inputs`` (default on; ``LCC_SHARE_INPUTS=0`` turns it
    off) groups Linears with one input; off, every Linear has its own statistic. ``batch_size``: samples per
    block forward (default: :func:`choose_batch`). A Linear no calibration token reaches (an MoE expert) gets
    :data:`NO_TOKENS_RULE`'s statistic and its name is appended to ``no_tokens``. Returns
    ``{qualified name: facts}``."""
    from tqdm.auto import tqdm

    if calib is None:
        raise ConfigError("this compressor needs calibration data (calib is None)")
    if targets.lm_head:
        raise ConfigError("targets.lm_head=true is not supported by calibrated compressors "
                          "(the engine walks the decoder blocks); valid: lm_head=false")
    share = _share_default() if share_inputs is None else bool(share_inputs)
    layers = decoder_layers(model)
    rng = targets.layer_range(len(layers))
    if len(rng) == 0:
        return {}
    was_training = model.training
    model.eval()
    inps, layer_args = capture_inputs(model, calib, stop_at=rng.stop)
    batch = choose_batch(model, len(inps), inps[0].shape[1], _device_of(layers[0]), batch_size)
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
            if batch > 1 and i == 0 and not batch_broadcasts(layer, inps, args, kw, dev):
                batch = 1
            last = i == rng.stop - 1
            if i < rng.start:
                inps = _run_block(layer, inps, args, kw, dev, keep=True, batch=batch)
                continue
            lins = targets.linears(layer)
            hooks = _Grouper(lins, f"layers.{i}.", stats, share)
            keep = not (propagate and lins) and not last
            try:
                outs = _run_block(layer, inps[:batch], args, kw, dev, keep=keep, batch=batch)
                hooks.first_batch_done()
                rest = _run_block(layer, inps[batch:], args, kw, dev, keep=keep, batch=batch)
                if keep:
                    outs += rest
            finally:
                hooks.remove()
            for names in hooks.groups(list(lins)):
                qn = [f"layers.{i}.{n}" for n in names]
                lead = hooks.leader.get(qn[0], qn[0])  # the member that fed the statistic (OPT declares k before q)
                if stats.has(lead):
                    stat = stats.pop(lead)
                else:  # no calibration token reached it (an MoE expert): NO_TOKENS_RULE, recorded
                    stat = stats.identity(lins[names[0]].in_features, lins[names[0]].weight.device)
                    if no_tokens is not None:
                        no_tokens.extend(qn)
                if group_rule is not None:
                    got = group_rule(qn, [lins[n] for n in names], stat)
                    facts.update({q: got.get(q) or {} for q in qn})
                else:
                    for q, n in zip(qn, names):
                        facts[q] = rule(q, lins[n], stat) or {}
            if propagate and lins and not last:
                outs = _run_block(layer, inps, args, kw, dev, keep=True, batch=batch)
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

    def compress_group(self, names: list[str], linears: list[nn.Linear], stat: torch.Tensor
                       ) -> dict[str, dict[str, Any]]:
        """Compress Linears that receive the same input from their one statistic (read-only); facts per
        Linear. Default: ``compress_layer`` on each; GPTQ and SparseGPT walk the stacked rows once."""
        return {n: self.compress_layer(n, lin, stat) or {} for n, lin in zip(names, linears)}

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
        no_tokens: list[str] = []
        if self.needs_calibration():
            layer_facts = run_sequential(model, calib, self.targets, self.stats(), self.compress_layer,
                                         propagate=self.propagate, desc=self.name, group_rule=self.compress_group,
                                         no_tokens=no_tokens)
        else:
            layer_facts = {n: self.compress_layer(n, lin, None) or {} for n, lin in lins.items()}
        facts = self.facts(lins, layer_facts)
        if no_tokens:  # never silently dense: the rule and the Linears it was applied to
            facts["no_calibration_tokens"] = {"rule": NO_TOKENS_RULE, "count": len(no_tokens), "linears": no_tokens}
        return facts
