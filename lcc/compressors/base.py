"""The one compressor interface, the name registry, and target selection.

A compressor is a small class that changes a model *in place*. The evaluator runs the dense model first,
then calls ``compress`` on the same model and runs it again, so only one copy of the weights is ever
resident. Compressors that need activations declare ``calibrated = True`` and receive calibration
batches; compressors that act during the forward pass (KV-cache quantization, activation quantization)
install forward hooks in ``compress`` and leave them there.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any, ClassVar

import torch
from torch import nn

from lcc import ConfigError

REGISTRY: dict[str, type["Compressor"]] = {}

#: Keys every compressor config may carry besides its own parameters.
COMMON_KEYS = {"name", "targets"}


def register(cls: type["Compressor"]) -> type["Compressor"]:
    REGISTRY[cls.name] = cls
    return cls


def qualify(message: str, params: Any, prefix: str = "compressor.") -> str:
    """``bits=9 is invalid`` -> ``compressor.bits=9 is invalid``: a message that starts with one of the
    compressor's keys names it by its full config key."""
    m = re.match(r"([A-Za-z_]\w*)[=.\[]", message)
    if m and (m.group(1) in params or m.group(1) in COMMON_KEYS or m.group(1) == "stages"):
        return prefix + message
    return message


def get(name: str) -> type["Compressor"]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown compressor {name!r}; valid choices: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


class Compressor:
    """Base class. Subclasses set ``name``, ``params`` (defaults) and implement ``compress``."""

    name: ClassVar[str]
    #: parameter name -> default value. Only these keys (plus COMMON_KEYS) are accepted.
    params: ClassVar[dict[str, Any]] = {}
    #: True if ``compress`` needs calibration batches (runs through the sequential engine).
    calibrated: ClassVar[bool] = False
    #: True if ``compress`` only changes parameters of ``target_linears(model, self.targets)`` (no hooks, no
    #: model attributes): lcc.job then stores the compressed weights once and reuses them (docs/caching.md).
    cacheable: ClassVar[bool] = False
    #: True if ``compress`` only sets weights of those Linears to zero and leaves every other value as it was
    #: (magnitude, wanda, random; not sparsegpt, which also updates the weights it keeps): the compressed-weights
    #: cache then stores one bit per weight (which ones survive) instead of a copy of the weights.
    zeroes_only: ClassVar[bool] = False

    def __init__(self, targets: dict | None = None, **kwargs: Any):
        self.validate(kwargs)
        for key, default in self.params.items():
            setattr(self, key, kwargs.get(key, default))
        self.targets = Targets(**(targets or {}))

    # ---- configuration -------------------------------------------------------------------------
    @classmethod
    def validate(cls, kwargs: dict[str, Any]) -> None:
        """Raise ConfigError naming a bad key/value and the valid choices."""
        unknown = set(kwargs) - set(cls.params) - COMMON_KEYS
        if unknown:
            raise ConfigError(
                f"compressor {cls.name!r} does not take {sorted(unknown)}; "
                f"valid parameters: {sorted(cls.params) or 'none'}")
        for key, v in kwargs.items():  # a boolean parameter takes a real boolean only (bool('no') is True)
            if isinstance(cls.params.get(key), bool) and not isinstance(v, bool):
                raise ConfigError(f"{key}={v!r} is invalid; valid: true or false (a YAML boolean)")
        cls.check(kwargs)

    @classmethod
    def check(cls, kwargs: dict[str, Any]) -> None:
        """Range checks of a subclass; called with the user's values (defaults not filled in)."""

    def level(self) -> str:
        """Short label of the compression level, used as a row of the sensitivity table."""
        return ",".join(f"{k}={getattr(self, k)}" for k in self.params) or "-"

    # ---- what it acts on -----------------------------------------------------------------------
    #: False for compressors that ignore ``targets`` (none).
    uses_targets: ClassVar[bool] = True
    #: True if ``compress`` installs something that acts during the forward (hooks, an attention function),
    #: so that an unchanged set of weights still means a compressed model (kv, quant_wa with a_bits < 16).
    acts_at_runtime: ClassVar[bool] = False

    @staticmethod
    def target_candidates(block: nn.Module) -> dict[str, nn.Module]:
        """The modules of a decoder block that ``targets.modules`` selects from (name inside the block)."""
        return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}

    def check_targets(self, model: nn.Module) -> None:
        """Raise ConfigError if ``targets`` selects nothing in ``model``: a layer range outside the model, or a
        ``modules`` entry that matches no module (the message lists the available names and the layer count)."""
        problem = targets_problem(model, self.targets, self.target_candidates)
        if problem:
            raise ConfigError(f"compressor.{problem} (compressor {self.name})")

    # ---- work ----------------------------------------------------------------------------------
    def compress(self, model: nn.Module, calib: torch.Tensor | None = None) -> dict[str, Any]:
        """Compress ``model`` in place. ``calib`` is a LongTensor [n_samples, seqlen] of token ids
        when ``calibrated`` is True. Returns facts worth logging (achieved sparsity, bits, ...)."""
        raise NotImplementedError


# ---- range-check helpers -----------------------------------------------------------------------
def check_int(kwargs: dict, key: str, lo: int, hi: int, what: str = "") -> None:
    if key in kwargs:
        v = kwargs[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{what or key}={v!r} is invalid; valid: an integer in {lo}..{hi}")


def check_fraction(kwargs: dict, key: str, lo_closed: bool = True, hi_closed: bool = False) -> None:
    if key in kwargs:
        v = kwargs[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = ok and (0 <= v if lo_closed else 0 < v) and (v <= 1 if hi_closed else v < 1)
        if not ok:
            rng = f"{'[' if lo_closed else '('}0, 1{']' if hi_closed else ')'}"
            raise ConfigError(f"{key}={v!r} is invalid; valid: a number in {rng}")


def check_group_size(kwargs: dict, key: str = "group_size", whole: str = "one group per row",
                     hi: int = 1 << 20) -> None:
    """A group size: a positive integer, or -1 for ``whole``."""
    check_int(kwargs, key, -1, hi)
    if kwargs.get(key) == 0:
        raise ConfigError(f"{key}=0 is invalid; valid: a positive integer, or -1 for {whole}")


def check_choice(kwargs: dict, key: str, choices: list) -> None:
    if key in kwargs and kwargs[key] not in choices:
        raise ConfigError(f"{key}={kwargs[key]!r} is invalid; valid choices: {choices}")


# ---- targets -----------------------------------------------------------------------------------
class Targets:
    """Which Linear layers of the decoder blocks a compressor touches.

    ``modules``: glob patterns matched against the name inside a block (``self_attn.q_proj``,
    ``mlp.down_proj``...), or the shorthands ``attn`` / ``mlp``; default all Linear layers.
    ``layers``: ``[start, stop)`` block indices (negative counts from the end), default all.
    Embeddings and lm_head are never touched unless ``lm_head=True``.
    """

    SHORTHANDS = {"attn": ["*attn*", "*attention*"], "mlp": ["*mlp*", "*feed_forward*", "*ffn*"]}
    KEYS = ("modules", "layers", "lm_head")

    def __init__(self, modules: list[str] | str | None = None, layers: list[int] | None = None,
                 lm_head: bool = False):
        self.check({"modules": modules, "layers": layers, "lm_head": lm_head})
        if isinstance(modules, str):
            modules = [modules]
        #: the user's entries (a name, a glob or a shorthand), each expanded to its glob patterns
        self.entries = {m: self.SHORTHANDS.get(m, [m]) for m in modules or ["*"]}
        self.patterns = [p for pats in self.entries.values() for p in pats]
        self.layers = list(layers) if layers is not None else None
        self.lm_head = lm_head

    @classmethod
    def check(cls, t: Any) -> None:
        """Types of a ``targets`` mapping, before any model is loaded (ConfigError naming the key)."""
        if t is None:
            return
        if not isinstance(t, dict):
            raise ConfigError(f"targets={t!r} is invalid; valid: a mapping with {', '.join(cls.KEYS)}")
        unknown = sorted(set(t) - set(cls.KEYS))
        if unknown:
            raise ConfigError(f"targets.{unknown[0]} is not a targets key; valid keys: {', '.join(cls.KEYS)}")
        m = t.get("modules")
        if m is not None and not ((isinstance(m, str) and m) or (
                isinstance(m, (list, tuple)) and m and all(isinstance(x, str) and x for x in m))):
            raise ConfigError(f"targets.modules={m!r} is invalid; valid: null (all Linear layers), a non-empty "
                              f"list of module names or globs (e.g. [self_attn.q_proj, 'mlp.*']), attn, mlp")
        lay = t.get("layers")
        if lay is not None and not (isinstance(lay, (list, tuple)) and len(lay) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) for x in lay)):
            raise ConfigError(f"targets.layers={lay!r} is invalid; valid: null (all blocks) or [start, stop) "
                              f"block indices (integers, negative counts from the end)")
        if "lm_head" in t and not isinstance(t["lm_head"], bool):
            raise ConfigError(f"targets.lm_head={t['lm_head']!r} is invalid; valid: true or false (a YAML boolean)")

    def layer_range(self, n_layers: int) -> range:
        if self.layers is None:
            return range(n_layers)
        start, stop = (x if x >= 0 else n_layers + x for x in self.layers)
        return range(max(0, start), min(n_layers, stop))

    def linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        return {n: m for n, m in block.named_modules()
                if isinstance(m, nn.Linear) and any(fnmatch.fnmatch(n, p) for p in self.patterns)}


def targets_problem(model: nn.Module, targets: Targets, candidates=None) -> str | None:
    """Why ``targets`` selects nothing (or less than it says) in ``model``, or None. ``candidates(block)``
    gives the modules ``targets.modules`` chooses from (default: the block's Linear layers)."""
    n = len(decoder_layers(model))
    if targets.layers is not None:
        start, stop = (x if x >= 0 else n + x for x in targets.layers)
        if not 0 <= start < stop <= n:
            return (f"targets.layers={targets.layers} is outside the model, which has {n} layers; valid: "
                    f"[start, stop) with 0 <= start < stop <= {n} (negative values count from the end)")
    candidates = candidates or Compressor.target_candidates
    layers = decoder_layers(model)
    names = sorted({name for i in targets.layer_range(n) for name in candidates(layers[i])})
    missing = [e for e, pats in targets.entries.items()
               if not any(fnmatch.fnmatch(name, p) for name in names for p in pats)]
    if missing:
        return (f"targets.modules entries {missing} match no module of the model's blocks; valid: names or globs "
                f"of {', '.join(names) or 'none'} (or the shorthands attn, mlp); the model has {n} layers")
    return None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a Hugging Face causal LM."""
    base = getattr(model, "base_model", model)
    for attr in ("layers", "h", "blocks", "decoder.layers"):
        obj = base
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ConfigError(f"cannot find the decoder blocks of {type(model).__name__}")


def weight_fingerprint(lin: nn.Module, chunk: int = 1 << 24) -> int | str:
    """A value that changes whenever any bit of ``lin.weight`` changes, without keeping a copy of the weights:
    on CPU the xxh3-128 of the raw bytes (~10 GB/s), on an accelerator a position-weighted sum of the raw bits
    reduced on the device in chunks (moving the weights to the host would cost more than the reduction).
    Detects a compressor that changed no weight."""
    w = lin.weight.detach()
    if w.device.type == "cpu":
        import xxhash

        return xxhash.xxh3_128(w.contiguous().view(torch.uint8).reshape(-1).numpy()).hexdigest()
    return bits_fingerprint(w, chunk)


def bits_fingerprint(w: torch.Tensor, chunk: int = 1 << 24) -> int:
    """sum_i bits_i * (i mod 65521 + 1) mod 2^64 over the raw bits of ``w``, computed where ``w`` lives."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[w.element_size()]
    bits = w.contiguous().reshape(-1).view(ints)
    total = 0
    with torch.no_grad():
        for a in range(0, bits.numel(), chunk):
            b = bits[a:a + chunk].long()
            pos = torch.arange(a, a + b.numel(), device=b.device) % 65521 + 1
            total = (total + int((b * pos).sum())) % (1 << 64)
    return total


def target_linears(model: nn.Module, targets: Targets) -> dict[str, nn.Linear]:
    """``{qualified name: Linear}`` of every targeted layer, in forward order."""
    layers = decoder_layers(model)
    out = {}
    for i in targets.layer_range(len(layers)):
        for n, m in targets.linears(layers[i]).items():
            out[f"layers.{i}.{n}"] = m
    if targets.lm_head and model.get_output_embeddings() is not None:
        out["lm_head"] = model.get_output_embeddings()
    return out
