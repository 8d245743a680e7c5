"""The one compressor interface, the name registry, and target selection.

A compressor is a small class that changes a model *in place*. The evaluator runs the dense model first,
then calls ``compress`` on the same model and runs it again, so only one copy of the weights is ever
resident. Compressors that need activations declare ``calibrated = True`` and receive calibration
batches; compressors that act during the forward pass (KV-cache quantization, activation quantization)
install forward hooks in ``compress`` and leave them there.
"""
from __future__ import annotations

import fnmatch
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
                f"its parameters are: {sorted(cls.params) or 'none'}")
        cls.check(kwargs)

    @classmethod
    def check(cls, kwargs: dict[str, Any]) -> None:
        """Range checks of a subclass; called with the user's values (defaults not filled in)."""

    def level(self) -> str:
        """Short label of the compression level, used as a row of the sensitivity table."""
        return ",".join(f"{k}={getattr(self, k)}" for k in self.params) or "-"

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

    def __init__(self, modules: list[str] | str | None = None, layers: list[int] | None = None,
                 lm_head: bool = False):
        if isinstance(modules, str):
            modules = [modules]
        pats: list[str] = []
        for m in modules or ["*"]:
            pats += self.SHORTHANDS.get(m, [m])
        self.patterns = pats
        if layers is not None and len(layers) != 2:
            raise ConfigError(f"targets.layers={list(layers)!r} is invalid; valid: [start, stop)")
        self.layers = list(layers) if layers is not None else None
        self.lm_head = bool(lm_head)

    def layer_range(self, n_layers: int) -> range:
        if self.layers is None:
            return range(n_layers)
        start, stop = (x if x >= 0 else n_layers + x for x in self.layers)
        return range(max(0, start), min(n_layers, stop))

    def linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        return {n: m for n, m in block.named_modules()
                if isinstance(m, nn.Linear) and any(fnmatch.fnmatch(n, p) for p in self.patterns)}


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
