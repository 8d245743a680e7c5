"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Weight + activation fake quantization (W·A·): RTN weights per group, activations per token.

Weights: ``fake_quant`` of every targeted Linear (``w_bits``, groups of ``group_size`` input weights,
``sym``), done once in ``compress``. Activations: a forward pre-hook on every targeted Linear
fake-quantizes its input at run time, per token (one grid per token over the whole feature dimension,
``a_group_size=-1``) or per group of ``a_group_size`` features, asymmetric min/max by default
(``a_sym=true``: symmetric absmax). ``16`` bits means "leave in full precision".
The hooks stay installed on the model (``QuantWA.remove(model)`` takes them off).
"""
from __future__ import annotations

import torch

from lcc.compressors.base import Compressor, Storage, Valid, groups, param, target_linears
from lcc.compressors.quantize import fake_quant, fake_quant_linears

HOOK_ATTR = "_lcc_act_quant_hooks"
BITS = Valid("an integer in 2..8, or 16 (full precision)",
             lambda v: isinstance(v, int) and not isinstance(v, bool) and (2 <= v <= 8 or v == 16))


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


class QuantWA(Compressor):
    """Weights RTN per group + activations fake-quantized per token at every targeted Linear input."""

    name = "quant_wa"
    w_bits: int = param(4, "weight bits; 16 = weights untouched", BITS)
    a_bits: int = param(8, "activation bits; 16 = activations untouched", BITS)
    group_size: int = param(128, "weight group (input weights per scale/zero); -1 = one group per row",
                            groups(whole="one group per row/token"))
    sym: bool = param(False, "weights: asymmetric min/max (false) or symmetric absmax (true)")
    a_group_size: int = param(-1, "activation group along the features; -1 = one grid per token",
                              groups(whole="one group per row/token"))
    a_sym: bool = param(False, "activations: asymmetric min/max per token (false) or symmetric absmax (true)")

    def level(self) -> str:
        s = f"w{self.w_bits}a{self.a_bits}"
        if self.group_size != 128:
            s += f"g{self.group_size}"
        if self.a_group_size != -1:
            s += f"ag{self.a_group_size}"
        return s + ("-symw" if self.sym else "") + ("-syma" if self.a_sym else "")

    def acts_at_runtime(self) -> bool:
        return self.a_bits != 16  # activation hooks

    def changes_weights(self) -> bool:
        return self.w_bits != 16

    def storage(self) -> Storage:
        """Weight-only (a_bits=16: no hooks) stores the weights; with activation hooks, nothing."""
        return Storage.NONE if self.acts_at_runtime() else Storage.WEIGHTS

    @staticmethod
    def remove(model) -> None:
        for h in getattr(model, HOOK_ATTR, []):
            h.remove()
        setattr(model, HOOK_ATTR, [])

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        self.clear_grids()
        if self.w_bits != 16:
            eff, n_w = fake_quant_linears(lins, self.w_bits, self.group_size, self.sym, record=self.record_grid)
        else:
            n_w = sum(lin.weight.numel() for lin in lins.values())
            eff = 16.0 * n_w
        n_hooks = install_act_quant(model, lins, self.a_bits, self.a_group_size, self.a_sym) \
            if self.a_bits != 16 else 0
        return {"effective_bits": eff / max(n_w, 1), "n_linears": len(lins), "act_quant_hooks": n_hooks}
