"""Weight + activation fake quantization (W·A·): RTN weights per group, activations per token.

Weights: ``fake_quant`` of every targeted Linear (``w_bits``, groups of ``group_size`` input weights,
``sym``), done once in ``compress``. Activations: a forward pre-hook on every targeted Linear
fake-quantizes its input at run time, per token (one grid per token over the whole feature dimension,
``a_group_size=-1``) or per group of ``a_group_size`` features, asymmetric min/max by default
(``a_sym=true``: symmetric absmax). ``16`` bits means "leave in full precision".
The hooks stay installed on the model (``QuantWA.remove(model)`` takes them off).
"""
from __future__ import annotations

import torch

from lcc import ConfigError
from lcc.compressors.base import Compressor, check_group_size, check_int, register, target_linears
from lcc.compressors.quantize import fake_quant, fake_quant_linears

HOOK_ATTR = "_lcc_act_quant_hooks"


def _check_bits(kw, key):
    if key in kw and kw[key] != 16:
        check_int(kw, key, 2, 8)


def install_act_quant(model, lins: dict, bits: int, group_size: int = -1, sym: bool = False) -> int:
    """Fake-quantize the input of every Linear in ``lins`` at run time; returns the number of hooks."""
    def hook(mod, args):
        x = args[0]
        return (fake_quant(x, bits, group_size, sym),) + tuple(args[1:])
    handles = getattr(model, HOOK_ATTR, [])
    for lin in lins.values():
        handles.append(lin.register_forward_pre_hook(hook))
    setattr(model, HOOK_ATTR, handles)
    return len(lins)


@register
class QuantWA(Compressor):
    """Weights RTN per group + activations fake-quantized per token at every targeted Linear input."""

    name = "quant_wa"
    params = {"w_bits": 4, "a_bits": 8, "group_size": 128, "sym": False, "a_group_size": -1, "a_sym": False}

    @classmethod
    def check(cls, kw):
        _check_bits(kw, "w_bits")
        _check_bits(kw, "a_bits")
        check_group_size(kw, "group_size", whole="one group per row/token")
        check_group_size(kw, "a_group_size", whole="one group per row/token")
        for k in ("sym", "a_sym"):
            if k in kw and not isinstance(kw[k], bool):
                raise ConfigError(f"{k}={kw[k]!r} is invalid; valid: true or false")

    def level(self) -> str:
        s = f"w{self.w_bits}a{self.a_bits}"
        if self.group_size != 128:
            s += f"g{self.group_size}"
        if self.a_group_size != -1:
            s += f"ag{self.a_group_size}"
        return s + ("-symw" if self.sym else "") + ("-syma" if self.a_sym else "")

    @property
    def acts_at_runtime(self) -> bool:  # type: ignore[override]
        return self.a_bits != 16

    @staticmethod
    def remove(model) -> None:
        for h in getattr(model, HOOK_ATTR, []):
            h.remove()
        setattr(model, HOOK_ATTR, [])

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        if self.w_bits != 16:
            eff, n_w = fake_quant_linears(lins.values(), self.w_bits, self.group_size, self.sym)
        else:
            n_w = sum(lin.weight.numel() for lin in lins.values())
            eff = 16.0 * n_w
        n_hooks = install_act_quant(model, lins, self.a_bits, self.a_group_size, self.a_sym) \
            if self.a_bits != 16 else 0
        return {"effective_bits": eff / max(n_w, 1), "n_linears": len(lins), "act_quant_hooks": n_hooks}
