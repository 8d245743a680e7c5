"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

What a compressor can target in a decoder block: every weight matrix that multiplies the hidden states, seen as
a Linear, whatever module holds it, with its *kind*.

* ``nn.Linear`` (and subclasses such as Falcon's ``FalconLinear``): itself.
* MoE experts stored as fused 3-D parameters (transformers 5: ``MixtralExperts``, ``Qwen3MoeExperts``,
  ``OlmoeExperts``, ``GptOssExperts``, ... every class decorated with ``use_experts_implementation``): one
  :class:`WeightView` per expert and projection, named ``<experts>.<e>.gate_up_proj`` (or ``up_proj``) and
  ``<experts>.<e>.down_proj``; its ``weight`` is the expert's [out, in] slice of the 3-D parameter (a view: writing
  it writes the model), transposed where the class stores [in, out] (gpt-oss).
* Routers that are not Linears (``MixtralTopKRouter``...): a :class:`WeightView` of their [experts, hidden] weight.
* gpt2-style ``Conv1D`` (weight [in, out], ``y = x @ W + b``): a :class:`WeightView` of the transposed weight.

A view behaves like a Linear for every compressor: ``weight`` [out, in], ``bias``, ``in_features``,
``out_features``, ``named_parameters(recurse=False)``, ``register_forward_hook(fn)`` (``fn(view, (x,), None)`` is
called with every input the matrix receives: for an expert, the calibration tokens *routed to it*, and for its
down projection the gated activations of those tokens) and ``register_forward_pre_hook(fn)`` (``fn(view, (x,))``
may return a replacement input: activation quantization; for experts the experts module then runs a per-expert
loop that applies it). One code path: compressors never know which kind of matrix they compress.

Kinds (:data:`KINDS`): ``attention``, ``mlp`` (dense MLP), ``experts``, ``shared_experts``, ``router``.
Routers are never selected by a glob or by the default target set, only by the ``router`` shorthand or their exact
name. Anything else in a block that holds a matrix the forward multiplies by (an unknown experts layout) makes
:func:`unsupported` name it, so that a job refuses the model before compressing instead of leaving it dense.
"""
from __future__ import annotations

import inspect
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("attention", "mlp", "experts", "shared_experts", "router")
#: shorthand -> the kinds it selects (besides its globs, in ``base.Targets.SHORTHANDS``)
KIND_SHORTHANDS = {"attn": {"attention"}, "mlp": {"mlp", "experts", "shared_experts"}, "experts": {"experts"},
                   "shared_experts": {"shared_experts"}, "router": {"router"}}
_ATTN_NAMES = {"attn", "self_attn", "attention", "self_attention", "cross_attn", "mixer"}
_ROUTER_NAMES = {"gate", "router", "shared_expert_gate"}


class _Handle:
    def __init__(self, remove: Callable[[], None]):
        self._remove = remove

    def remove(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None


class WeightView:
    """A 2-D weight matrix that is not an ``nn.Linear``'s, seen as one (see the module's docstring)."""

    def __init__(self, owner: nn.Module, attr: str, index: int | None = None, transposed: bool = False,
                 bias_attr: str | None = None):
        self.owner, self.attr, self.index, self.transposed, self.bias_attr = owner, attr, index, transposed, bias_attr

    # ---- the Linear-like surface ----------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        w = getattr(self.owner, self.attr).data
        if self.index is not None:
            w = w[self.index]
        return w.t() if self.transposed else w

    @property
    def bias(self) -> torch.Tensor | None:
        if self.bias_attr is None or getattr(self.owner, self.bias_attr, None) is None:
            return None
        b = getattr(self.owner, self.bias_attr).data
        return b[self.index] if self.index is not None else b

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def named_parameters(self, prefix: str = "", recurse: bool = False):
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def __repr__(self) -> str:
        idx = f"[{self.index}]" if self.index is not None else ""
        return f"WeightView({type(self.owner).__name__}.{self.attr}{idx}{'.T' if self.transposed else ''})"

    # ---- inputs ---------------------------------------------------------------------------------
    def register_forward_hook(self, fn) -> _Handle:
        """``fn(self, (x,), None)`` with every input this matrix receives (a Conv1D's or router's own input)."""
        def hook(mod, args, kwargs, out):
            fn(self, args[:1] if args else (next(iter(kwargs.values())),), None)
        return _Handle(self.owner.register_forward_hook(hook, with_kwargs=True).remove)

    def register_forward_pre_hook(self, fn) -> _Handle:
        """``fn(self, args)`` may return replacement arguments (the owner's input is this matrix's input)."""
        return _Handle(self.owner.register_forward_pre_hook(lambda mod, args: fn(self, args)).remove)


class ExpertView(WeightView):
    """One projection of one expert of a fused experts module (``proj``: ``gate_up`` / ``up`` / ``down``)."""

    def __init__(self, owner: nn.Module, attr: str, index: int, proj: str):
        bias = f"{attr}_bias" if getattr(owner, "has_bias", False) else None
        super().__init__(owner, attr, index, transposed=bool(getattr(owner, "is_transposed", False)), bias_attr=bias)
        self.proj = proj

    def register_forward_hook(self, fn) -> _Handle:
        """``fn(self, (x,), None)`` with the inputs of this expert's projection for the tokens routed to it (no call
        for an expert that receives no token in a forward)."""
        def hook(mod, args, kwargs, out):
            hidden, index, _ = experts_inputs(mod, args, kwargs)
            sel = (index == self.index).any(-1)
            if not bool(sel.any()):
                return
            x = hidden.reshape(-1, hidden.shape[-1])[sel.reshape(-1)]
            if self.proj == "down":
                x = expert_hidden(mod, self.index, x)
            fn(self, (x,), None)
        return _Handle(self.owner.register_forward_hook(hook, with_kwargs=True).remove)

    def register_forward_pre_hook(self, fn) -> _Handle:
        """``fn(self, (x,))`` may replace this projection's input: the experts module runs :func:`per_expert_forward`
        while any such hook is installed."""
        hooks = self.owner.__dict__.setdefault("_lcc_expert_pre_hooks", {})
        key = (self.proj, self.index)
        hooks.setdefault(key, []).append(fn)
        if "forward" not in self.owner.__dict__:
            self.owner.forward = types.MethodType(per_expert_forward, self.owner)

        def remove():
            lst = hooks.get(key, [])
            if fn in lst:
                lst.remove(fn)
            if not any(hooks.values()) and "forward" in self.owner.__dict__:
                del self.owner.forward
        return _Handle(remove)


def experts_inputs(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden_states [T, H], top-k expert indices [T, k], top-k weights [T, k]) of one call of an experts module."""
    fwd = getattr(type(mod).forward, "__wrapped__", type(mod).forward)
    bound = inspect.signature(fwd).bind(mod, *args, **kwargs)
    vals = list(bound.arguments.values())[1:4]
    return vals[0], vals[1], vals[2]


def expert_hidden(mod: nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
    """The input of expert ``e``'s down projection for tokens ``x``: its gated (or activated) up projection."""
    up = ExpertView(mod, "gate_up_proj" if mod.has_gate else "up_proj", e, "gate_up" if mod.has_gate else "up")
    h = up(x)
    return mod._apply_gate(h) if mod.has_gate else mod.act_fn(h)


def per_expert_forward(self: nn.Module, *args, **kwargs) -> torch.Tensor:
    """The experts' forward as one loop over the experts hit (transformers' eager experts loop), applying the
    installed input pre-hooks of each expert's projections (activation quantization)."""
    hidden, index, weights = experts_inputs(self, args, kwargs)
    hooks = self.__dict__.get("_lcc_expert_pre_hooks", {})
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = torch.zeros_like(flat)
    up_attr, up_proj = ("gate_up_proj", "gate_up") if self.has_gate else ("up_proj", "up")
    for e in torch.unique(index).tolist():
        if not 0 <= e < self.num_experts:
            continue
        tok, pos = torch.where(index.reshape(flat.shape[0], -1) == e)
        x = flat[tok]
        for fn in hooks.get((up_proj, e), []):
            x = fn(None, (x,))[0]
        h = ExpertView(self, up_attr, e, up_proj)(x)
        h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
        for fn in hooks.get(("down", e), []):
            h = fn(None, (h,))[0]
        y = ExpertView(self, "down_proj", e, "down")(h)
        if getattr(self, "has_post_expert_norm", False):
            y = self.post_expert_norm(y)
        y = y * weights.reshape(flat.shape[0], -1)[tok, pos, None]
        out.index_add_(0, tok, y.to(out.dtype))
    return out.reshape(hidden.shape)


# ---- discovery ----------------------------------------------------------------------------------
def is_fused_experts(m: nn.Module) -> bool:
    """A module holding its experts as 3-D parameters."""
    return any(p.dim() == 3 for p in m.parameters(recurse=False)) and hasattr(m, "num_experts")


def supported_experts(m: nn.Module) -> bool:
    """Fused experts in a layout lcc knows: transformers' ``use_experts_implementation`` classes."""
    return (is_fused_experts(m) and hasattr(m, "has_gate") and hasattr(m, "down_proj")
            and hasattr(m, "gate_up_proj" if m.has_gate else "up_proj") and getattr(m, "down_proj").dim() == 3)


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None and m.weight.dim() == 2


def _has_experts(m: nn.Module | None) -> bool:
    return m is not None and any(is_fused_experts(c) or n in ("experts", "shared_expert", "shared_experts")
                                 for n, c in m.named_children())


def _is_router(name: str, m: nn.Module, parent: nn.Module | None) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    w = getattr(m, "weight", None)
    return (isinstance(w, torch.Tensor) and w.dim() == 2 and not is_fused_experts(m)
            and (leaf in _ROUTER_NAMES or "Router" in type(m).__name__) and _has_experts(parent))


@dataclass
class Target:
    """One targetable matrix of a block: its name inside the block, the Linear-like object, its kind."""

    name: str
    module: Any
    kind: str


def _kind(name: str, mods: dict[str, nn.Module]) -> str:
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts))]
    if any(p in ("shared_expert", "shared_experts") or p.startswith("shared_expert") for p in parts[:-1]):
        return "shared_experts"
    if "experts" in parts[:-1] or any(is_fused_experts(mods[p]) for p in prefixes if p in mods):
        return "experts"
    if any(p in _ATTN_NAMES for p in parts[:-1]) or any("Attention" in type(mods[p]).__name__
                                                       for p in prefixes if p in mods):
        return "attention"
    return "mlp"


def block_targets(block: nn.Module) -> list[Target]:
    """Every targetable matrix of a decoder block, in module order."""
    mods = dict(block.named_modules())
    out: list[Target] = []
    for n, m in mods.items():
        parent = mods.get(n.rsplit(".", 1)[0]) if "." in n else block
        if _is_router(n, m, parent):
            out.append(Target(n, m if isinstance(m, nn.Linear) else WeightView(
                m, "weight", bias_attr="bias" if getattr(m, "bias", None) is not None else None), "router"))
        elif isinstance(m, nn.Linear):
            out.append(Target(n, m, _kind(n, mods)))
        elif _is_conv1d(m):
            out.append(Target(n, WeightView(m, "weight", transposed=True, bias_attr="bias"), _kind(n, mods)))
        elif supported_experts(m):
            up, proj = ("gate_up_proj", "gate_up") if m.has_gate else ("up_proj", "up")
            kind = "shared_experts" if "shared" in n else "experts"
            for e in range(m.num_experts):
                out.append(Target(f"{n}.{e}.{up}", ExpertView(m, up, e, proj), kind))
                out.append(Target(f"{n}.{e}.down_proj", ExpertView(m, "down_proj", e, "down"), kind))
    return out


def unsupported(block: nn.Module) -> list[str]:
    """Modules of a block holding expert weights in a layout lcc cannot target (``name (ClassName)``)."""
    return [f"{n} ({type(m).__name__})" for n, m in block.named_modules()
            if is_fused_experts(m) and not supported_experts(m)]


def is_view(m: Any) -> bool:
    return isinstance(m, WeightView)
