"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Mixed-precision RTN: the study's remedy. A fraction ``keep`` of the weight groups stays at
``high_bits``, the rest goes to ``bits``.

A *group* is the quantization group of the project's grid: ``group_size`` consecutive input weights of one
output row (the last group of a row shorter when the width is not a multiple; one group per row when
``group_size=-1``). Each group is fake-quantized exactly as ``quant`` would (same scale/zero rule) at
either precision, so ``keep=0`` is bit-for-bit ``quant(bits)`` and ``keep=1`` is ``quant(high_bits)``.

Saliency of a group (higher = kept at high precision):

* ``max_abs`` (default, no calibration): max |W| over the group (the outlier weights RTN hurts most);
* ``wanda`` (calibrated): Σ_j |W_ij|·‖X_j‖₂ over the group's input channels j;
* ``act_norm`` (calibrated): ‖X_group‖ = sqrt(Σ_j ‖X_j‖²) of the group's input channels (same for every
  row, so whole input-channel blocks are kept, like outlier-channel methods).

Ranking is **per layer**: every targeted Linear keeps round(keep · its number of groups) groups, so the
high-precision budget is spread evenly and saliencies of layers with different scales are never compared.
"""
from __future__ import annotations

import torch

from lcc import ConfigError
from lcc.compressors.base import Storage, choice, fraction, groups, ints, param
from lcc.compressors.engine import Calibrated, NormStats
from lcc.compressors.quantize import QuantGrid, fake_quant_grid, group_index, n_groups

SALIENCIES = ["max_abs", "wanda", "act_norm"]
FLAG_BITS = 1  # one bit per group marks its precision



def group_saliency(W: torch.Tensor, saliency: str, group_size: int, norms: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """[rows, n_groups] saliency of every group of ``W``."""
    rows, cols = W.shape
    idx = group_index(cols, group_size, W.device).unsqueeze(0).expand(rows, cols)
    ng = n_groups(cols, group_size)
    Wa = W.float().abs()
    out = torch.zeros(rows, ng, dtype=torch.float32, device=W.device)
    if saliency == "max_abs":
        return out.scatter_reduce_(1, idx, Wa, "amax", include_self=False)
    if norms is None:
        raise ConfigError(f"saliency={saliency!r} needs calibration data")
    norms = norms.to(W.device).float().reshape(1, -1)
    if saliency == "wanda":
        return out.scatter_add_(1, idx, Wa * norms)
    if saliency == "act_norm":
        return out.scatter_add_(1, idx, (norms ** 2).expand(rows, cols)).sqrt_()
    raise ConfigError(f"saliency={saliency!r} is invalid; valid choices: {SALIENCIES}")


def mixed_quant_(weight: torch.Tensor, saliency: torch.Tensor, keep: float, bits: int, high_bits: int,
                 group_size: int, sym: bool = False) -> tuple[int, QuantGrid | None]:
    """In place; returns the number of groups kept at ``high_bits`` and the grid of the result (None when
    ``high_bits`` > 8: codes of up to 8 bits only)."""
    rows, cols = weight.shape
    n_total = saliency.numel()
    k = int(round(keep * n_total))
    low, s_lo, z_lo = fake_quant_grid(weight, bits, group_size, sym)
    if k == 0:
        weight.copy_(low)
        return 0, QuantGrid(bits, group_size, s_lo, z_lo)
    high, s_hi, z_hi = fake_quant_grid(weight, high_bits, group_size, sym)
    grid_hi = QuantGrid(high_bits, group_size, s_hi, z_hi) if high_bits <= 8 else None
    if k >= n_total:
        weight.copy_(high)
        return n_total, grid_hi
    sel = torch.zeros(n_total, dtype=torch.bool, device=weight.device)
    sel[torch.topk(saliency.flatten(), k).indices] = True
    sel = sel.reshape(saliency.shape)
    idx = group_index(cols, group_size, weight.device)
    col_mask = sel[:, idx]
    weight.copy_(torch.where(col_mask, high, low))
    grid = QuantGrid(bits, group_size, torch.where(sel, s_hi, s_lo), torch.where(sel, z_hi, z_lo), high=sel,
                     high_bits=high_bits) if high_bits <= 8 else None
    return k, grid


class Mixed(Calibrated):
    """Mixed-precision RTN keeping the most salient ``keep`` fraction of groups at ``high_bits``."""

    name = "mixed"
    stats = NormStats
    bits: int = param(4, "bits of the low-precision groups", ints(2, 8))
    high_bits: int = param(8, "bits of the kept groups (>= bits)", ints(2, 16))
    keep: float = param(0.02, "fraction of the groups of every targeted Linear kept at high_bits (ranked per "
                              "layer)", fraction(hi_closed=True))
    group_size: int = param(128, "input weights per (scale, zero) group; -1 = one group per row", groups())
    sym: bool = param(False, "symmetric absmax grid instead of asymmetric min/max")
    saliency: str = param("max_abs", "max_abs (group max |W|, no calibration) | wanda (sum |W|*||X||, "
                                     "calibrated) | act_norm (calibrated)", choice(*SALIENCIES))
    propagate: bool = param(True, "calibrated saliencies only: next block calibrates on the quantized outputs")

    def check(self):
        if self.high_bits < self.bits:
            raise ConfigError(f"high_bits={self.high_bits!r} is invalid; valid: an integer >= bits ({self.bits})")

    def needs_calibration(self) -> bool:
        return self.saliency != "max_abs"

    def storage(self) -> Storage:
        return Storage.WEIGHTS

    def level(self) -> str:
        s = f"w{self.bits}g{self.group_size}+{self.keep:g}@{self.high_bits}"
        return s + ("sym" if self.sym else "") + ("" if self.saliency == "max_abs" else f"-{self.saliency}")

    def compress_layer(self, name, linear, norms):
        sal = group_saliency(linear.weight.data, self.saliency, self.group_size, norms)
        kept, grid = mixed_quant_(linear.weight.data, sal, self.keep, self.bits, self.high_bits, self.group_size,
                                  self.sym)
        self.record_grid(name, grid)
        return {"groups_high": kept}

    def facts(self, lins, layer_facts):
        n_w = bits_sum = overhead = groups_all = groups_high = 0.0
        for name, lin in lins.items():
            rows, cols = lin.weight.shape
            ng = n_groups(cols, self.group_size)
            high_groups = layer_facts.get(name, {}).get("groups_high", 0)
            # weights in high groups: approximate the short last group's width by the mean group width
            w_high = high_groups * cols / ng
            bits_sum += self.high_bits * w_high + self.bits * (rows * cols - w_high)
            overhead += rows * ng * (32 + FLAG_BITS)
            n_w += rows * cols
            groups_all += rows * ng
            groups_high += high_groups
        return {"effective_bits": (bits_sum + overhead) / max(n_w, 1),
                "effective_bits_no_flags": (bits_sum + overhead * 32 / (32 + FLAG_BITS)) / max(n_w, 1),
                "high_fraction": groups_high / max(groups_all, 1), "n_linears": len(lins)}
