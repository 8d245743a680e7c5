"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

The one compressor contract, the name registry, and target selection.

A compressor is a small class that changes a model *in place*. The evaluator runs the dense model first,
then calls ``compress`` on the same model and runs it again, so only one copy of the weights is ever
resident.

**Parameters are fields, declared once.** Every subclass of :class:`Compressor` is made a dataclass (keyword
only) and, if it sets ``name``, registered under that name. Each parameter is a field declared with
:func:`param` (default, one line of documentation, the valid values). That one declaration is

* the constructor: ``Quant(bits=3)``; ``build({"name": "quant", "bits": 3})`` from a config mapping;
* the validation, run on construction: the annotation's type (booleans are booleans), then the field's
  ``valid`` rule, then the class's cross-field ``check()``; every failure is a :class:`lcc.ConfigError`
  naming the value and the valid choices;
* the Hydra schema of ``compressor=<name>`` (``lcc.compressors.config_node``: no YAML repeats a default);
* the documentation: ``python -m lcc.compressors`` lists every compressor with its fields.

**Capabilities are methods**: ``needs_calibration()`` (``compress`` then gets calibration token ids),
``storage()`` (what the compressed-weights cache stores: a keep-mask, the weights, or nothing, see
:class:`Storage`), ``acts_at_runtime()`` (``compress`` installs hooks or an attention function that act during
the forward pass: KV cache, activations; their storage is ``NONE``), ``prunes()`` (its zeros must survive
later stages of a composition). ``uses_targets`` (class attribute: whether ``targets`` is a parameter at all)
and ``target_candidates`` (what ``targets.modules`` selects from) say what it acts on.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import nn

from lcc import ConfigError
from lcc.checks import UNSET, Valid, choice, field_problems, fraction, groups, ints, is_int, param  # noqa: F401
from lcc.compressors.layers import KIND_SHORTHANDS, block_targets, unsupported
from lcc.compressors.quantize import QuantGrid
from lcc.registry import Registry

#: every compressor by name (a subclass that sets ``name`` registers itself; a second class under a taken
#: name is an error)
REGISTRY: Registry[type["Compressor"]] = Registry("compressor")
get = REGISTRY.get


def qualify(message: str, keys: Any, prefix: str = "compressor.") -> str:
    """``bits=9 is invalid`` -> ``compressor.bits=9 is invalid``: a message that starts with one of the
    compressor's keys names it by its full config key."""
    m = re.match(r"([A-Za-z_]\w*)[=.\[]", message)
    if m and (m.group(1) in keys or m.group(1) in ("name", "targets", "stages")):
        return prefix + message
    return message


# ---- targets ------------------------------------------------------------------------------------
@dataclass
class Targets:
    """Which Linear layers of the decoder blocks a compressor touches.

    ``modules``: glob patterns matched against the name inside a block (``self_attn.q_proj``,
    ``mlp.down_proj``...), or the shorthands ``attn`` / ``mlp``; default all Linear layers.
    ``layers``: ``[start, stop)`` block indices (negative counts from the end), default all.
    Embeddings and lm_head are never touched unless ``lm_head=True``.
    """

    modules: list[str] | str | None = None
    layers: list[int] | None = None
    lm_head: bool = False

    SHORTHANDS: ClassVar[dict[str, list[str]]] = {"attn": ["*attn*", "*attention*"],
                                                  "mlp": ["*mlp*", "*feed_forward*", "*ffn*"],
                                                  "experts": [], "shared_experts": [], "router": []}

    KEYS: ClassVar[tuple[str, ...]] = ("modules", "layers", "lm_head")

    def __post_init__(self):
        self.check({"modules": self.modules, "layers": self.layers, "lm_head": self.lm_head})
        mods = [self.modules] if isinstance(self.modules, str) else self.modules
        #: the user's entries (a name, a glob or a shorthand), each expanded to its glob patterns
        self.entries = {m: self.SHORTHANDS.get(m, [m]) for m in mods or ["*"]}
        self.patterns = [p for pats in self.entries.values() for p in pats]
        self.layers = list(self.layers) if self.layers is not None else None

    @classmethod
    def check(cls, t: Any) -> None:
        """Types of a ``targets`` mapping, before any model is loaded (ConfigError naming the key)."""
        if t is None:
            return
        if not isinstance(t, Mapping):
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
                is_int(x) for x in lay)):
            raise ConfigError(f"targets.layers={lay!r} is invalid; valid: null (all blocks) or [start, stop) "
                              f"block indices (integers, negative counts from the end)")
        if "lm_head" in t and not isinstance(t["lm_head"], bool):
            raise ConfigError(f"targets.lm_head={t['lm_head']!r} is invalid; valid: true or false (a YAML boolean)")

    @classmethod
    def of(cls, value: Any) -> "Targets":
        """``value`` as Targets: a Targets, a mapping of its fields, or None (every Linear)."""
        if isinstance(value, Targets):
            return value
        cls.check(value)
        return cls(**(value or {}))

    def layer_range(self, n_layers: int) -> range:
        if self.layers is None:
            return range(n_layers)
        start, stop = (x if x >= 0 else n_layers + x for x in self.layers)
        return range(max(0, start), min(n_layers, stop))

    def selects(self, name: str, kind: str | None = None) -> bool:
        """Whether an entry selects the matrix ``name`` (inside a block) of ``kind`` (``layers.KINDS``): by a glob,
        or by a shorthand's kinds (``mlp`` also selects experts). A router only by ``router`` or its exact name."""
        if kind == "router":
            return any(e == "router" or e == name for e in self.entries)
        return any(fnmatch.fnmatch(name, p) for p in self.patterns) or (
            kind is not None and any(kind in KIND_SHORTHANDS.get(e, ()) for e in self.entries))

    def linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        """The targeted matrices of ``block``: Linears, and Linear-like views of fused experts, routers and
        Conv1D layers (``lcc.compressors.layers``)."""
        return {t.name: t.module for t in block_targets(block) if self.selects(t.name, t.kind)}


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
    kinds = {t.name: t.kind for i in targets.layer_range(n) for t in block_targets(layers[i])}
    names = sorted({name for i in targets.layer_range(n) for name in candidates(layers[i])})
    missing = [e for e in targets.entries
               if not any(Targets.of({"modules": [e]}).selects(name, kinds.get(name)) for name in names)]
    if missing:
        return (f"targets.modules entries {missing} match no module of the model's blocks; valid: names or globs "
                f"of {_short_names(names) or 'none'} (or the shorthands attn, mlp, experts, shared_experts, "
                f"router); the model has {n} layers")
    return None


def _short_names(names: list[str], limit: int = 40) -> str:
    """Names for a message: expert views collapsed (``mlp.experts.*.down_proj`` for 64 experts)."""
    import re as _re

    out = list(dict.fromkeys(_re.sub(r"experts\.\d+\.", "experts.*.", x) for x in names))
    return ", ".join(out[:limit]) + (f", ... ({len(out) - limit} more)" if len(out) > limit else "")


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


# ---- the contract -------------------------------------------------------------------------------
class Storage(str, Enum):
    """What the compressed-weights cache stores for a compressor (docs/caching.md)."""

    #: nothing: ``compress`` installs hooks or model attributes, or changes nothing worth storing
    NONE = "none"
    #: one bit per weight of ``touched_linears``: ``compress`` only sets weights there to zero
    MASK = "mask"
    #: the parameters of ``touched_linears``: ``compress`` changes nothing else (no hooks, no attributes)
    WEIGHTS = "weights"


@dataclass(kw_only=True)
class Compressor:
    """Base class: subclasses set ``name``, declare their parameters with :func:`param` and implement
    ``compress``; they override the capability methods that differ from the defaults."""

    name: ClassVar[str]
    #: False for a compressor that ignores ``targets`` (none): then ``targets`` is not one of its parameters
    uses_targets: ClassVar[bool] = True
    targets: Targets = param(default_factory=Targets,
                             doc="which weight matrices: modules (globs, or attn / mlp / experts / "
                                 "shared_experts / router), layers [start, stop), lm_head")

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        dataclass(kw_only=True)(cls)  # in place: the fields are the parameters
        if "name" in vars(cls):
            REGISTRY.register(cls)

    def __post_init__(self) -> None:
        self.targets = Targets.of(self.targets)
        if problems := field_problems(type(self), self):  # the annotation's type, then the field's rule
            raise ConfigError(problems[0])
        self.check()

    # ---- configuration -------------------------------------------------------------------------
    @classmethod
    def param_fields(cls) -> list[dataclasses.Field]:
        """The compressor's own parameters (every field but ``targets``)."""
        return [f for f in dataclasses.fields(cls) if f.name != "targets"]

    def check(self) -> None:
        """Rules between parameters (a subclass raises ConfigError naming the value and the valid choices)."""

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.param_fields()}

    def level(self) -> str:
        """Short label of the compression level, used as a row of the sensitivity table."""
        return ",".join(f"{k}={v}" for k, v in self.params().items()) or "-"

    # ---- capabilities --------------------------------------------------------------------------
    def needs_calibration(self) -> bool:
        """True if ``compress`` needs calibration token ids."""
        return False

    def storage(self) -> Storage:
        """What the compressed-weights cache stores for this configuration (see :class:`Storage`)."""
        return Storage.NONE

    def acts_at_runtime(self) -> bool:
        """True if ``compress`` installs something that acts during the forward (hooks, an attention function),
        so that an unchanged set of weights still means a compressed model (kv, quant_wa with a_bits < 16)."""
        return False

    def prunes(self) -> bool:
        """True if the zeros this compressor sets must stay zero through later stages of a composition."""
        return False

    def changes_weights(self) -> bool:
        """True if ``compress`` changes every weight matrix of ``touched_linears`` (the job fails, naming them, when
        one is left unchanged: a result never reports dense weights as compressed)."""
        return not self.acts_at_runtime()

    def keep_zeros(self, masks: dict[str, torch.Tensor]) -> None:
        """Weights where ``masks[name]`` is True must stay zero (set by ``compose`` before a later stage runs;
        ``compose`` re-applies the masks afterwards, so a stage only overrides this to compensate, as GPTQ)."""

    def quant_grids(self) -> dict[str, QuantGrid]:
        """``{qualified Linear name: QuantGrid}`` recorded by the last ``compress()``: every Linear whose final
        weights lie on an integer grid (the cache stores their codes; the others as full copies)."""
        return self.__dict__.get("_grids", {})

    def record_grid(self, name: str, grid: QuantGrid | None) -> None:
        """Record (or, with None, forget) the grid of the Linear ``name`` just written by ``compress()``."""
        grids = self.__dict__.setdefault("_grids", {})
        if grid is None:
            grids.pop(name, None)
        else:
            grids[name] = grid

    def clear_grids(self) -> None:
        """Forget every recorded grid (at the start of ``compress()``)."""
        self.__dict__["_grids"] = {}

    def touched_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Every Linear whose parameters ``compress`` may change (what the weights cache stores)."""
        return target_linears(model, self.targets) if self.uses_targets else {}

    # ---- what it acts on -----------------------------------------------------------------------
    @staticmethod
    def target_candidates(block: nn.Module) -> dict[str, nn.Module]:
        """The modules of a decoder block that ``targets.modules`` selects from (name inside the block): its
        Linears and the Linear-like views of experts, routers and Conv1D layers (``lcc.compressors.layers``)."""
        return {t.name: t.module for t in block_targets(block)}

    def check_targets(self, model: nn.Module) -> None:
        """Raise ConfigError if ``targets`` selects nothing in ``model``: a layer range outside the model, or a
        ``modules`` entry that matches no module (the message lists the available names and the layer count)."""
        problem = targets_problem(model, self.targets, self.target_candidates) if self.uses_targets else None
        if problem:
            raise ConfigError(f"compressor.{problem} (compressor {self.name})")
        if self.uses_targets and type(self).target_candidates is Compressor.target_candidates:
            layers = decoder_layers(model)
            bad = sorted({u for i in self.targets.layer_range(len(layers)) for u in unsupported(layers[i])})
            if bad:  # refused before compressing: never a "compressed" model whose experts stayed dense
                raise ConfigError(f"{type(model).__name__} ({getattr(model.config, 'model_type', '?')}) is not "
                                  f"supported by compressor {self.name}: its experts {', '.join(bad[:4])} store "
                                  f"their weights in a layout lcc does not know (not a transformers "
                                  f"use_experts_implementation class), so they would stay dense")

    def check_inputs(self, tokenizer: Any, ids: torch.Tensor) -> None:
        """Checks that need the job's tokenizer and token ids (``ids``: the job's own windows or prompts), run
        before any evaluation; raise ConfigError. Default: nothing (a checkpoint checks its tokenizer)."""

    # ---- work ----------------------------------------------------------------------------------
    def compress(self, model: nn.Module, calib: torch.Tensor | None = None) -> dict[str, Any]:
        """Compress ``model`` in place. ``calib`` is a LongTensor [n_samples, seqlen] of token ids
        when ``needs_calibration()``. Returns facts worth logging (achieved sparsity, bits, ...)."""
        raise NotImplementedError


def plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (anything else unchanged)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def build(cfg: Any) -> Compressor:
    """A compressor from a mapping with ``name``, its parameters and optionally ``targets``. Raises
    ConfigError for an unknown name, an unknown key or a bad value."""
    params = dict(plain(cfg))
    name = params.pop("name", None)
    cls = get(name)
    names = sorted(f.name for f in cls.param_fields())
    if unknown := sorted(set(params) - set(names) - ({"targets"} if cls.uses_targets else set())):
        raise ConfigError(f"compressor {name!r} does not take {unknown}; valid parameters: {names or 'none'}")
    return cls(**params)
