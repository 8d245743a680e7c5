"""Mixed-precision RTN: the study's remedy. A fraction ``keep`` of the weight groups stays at
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
from lcc.compressors.base import (Compressor, check_choice, check_fraction, check_group_size, check_int,
                                  register, target_linears)
from lcc.compressors.engine import NormStats, run_sequential
from lcc.compressors.quantize import fake_quant, n_groups

SALIENCIES = ["max_abs", "wanda", "act_norm"]
FLAG_BITS = 1  # one bit per group marks its precision


def group_index(width: int, group_size: int) -> torch.Tensor:
    """Group of every input column, following ``fake_quant``'s grouping."""
    g = width if group_size <= 0 or group_size >= width else group_size
    return torch.arange(width) // g


def group_saliency(W: torch.Tensor, saliency: str, group_size: int, norms: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """[rows, n_groups] saliency of every group of ``W``."""
    rows, cols = W.shape
    idx = group_index(cols, group_size).to(W.device).unsqueeze(0).expand(rows, cols)
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
                 group_size: int, sym: bool = False) -> int:
    """In place; returns the number of groups kept at ``high_bits``."""
    rows, cols = weight.shape
    n_total = saliency.numel()
    k = int(round(keep * n_total))
    low = fake_quant(weight, bits, group_size, sym)
    if k == 0:
        weight.copy_(low)
        return 0
    high = fake_quant(weight, high_bits, group_size, sym)
    if k >= n_total:
        weight.copy_(high)
        return n_total
    sel = torch.zeros(n_total, dtype=torch.bool, device=weight.device)
    sel[torch.topk(saliency.flatten(), k).indices] = True
    sel = sel.reshape(saliency.shape)
    idx = group_index(cols, group_size).to(weight.device)
    col_mask = sel[:, idx]
    weight.copy_(torch.where(col_mask, high, low))
    return k


class _MixedMethod(NormStats):
    def __init__(self, comp: "Mixed"):
        super().__init__()
        self.c = comp
        self.kept: dict[str, int] = {}

    def compress_layer(self, name, linear):
        c = self.c
        norms = self.pop_norms(name)
        sal = group_saliency(linear.weight.data, c.saliency, c.group_size, norms)
        self.kept[name] = mixed_quant_(linear.weight.data, sal, c.keep, c.bits, c.high_bits, c.group_size, c.sym)
        return {"groups_high": self.kept[name]}


@register
class Mixed(Compressor):
    """Mixed-precision RTN keeping the most salient ``keep`` fraction of groups at ``high_bits``."""

    name = "mixed"
    cacheable = True
    params = {"bits": 4, "high_bits": 8, "keep": 0.02, "group_size": 128, "sym": False,
              "saliency": "max_abs", "propagate": True}
    #: class default; the instance attribute set in __init__ says whether *this* configuration needs
    #: calibration (saliency wanda/act_norm) -- read ``compressor.calibrated`` on the instance.
    calibrated = True

    @classmethod
    def check(cls, kw):
        check_int(kw, "bits", 2, 8)
        check_int(kw, "high_bits", 2, 16)
        check_fraction(kw, "keep", hi_closed=True)
        check_group_size(kw)
        check_choice(kw, "saliency", SALIENCIES)
        bits, high = kw.get("bits", cls.params["bits"]), kw.get("high_bits", cls.params["high_bits"])
        if high < bits:
            raise ConfigError(f"high_bits={high!r} is invalid; valid: an integer >= bits ({bits})")

    def __init__(self, targets=None, **kw):
        super().__init__(targets, **kw)
        self.calibrated = self.saliency != "max_abs"

    @property
    def needs_calibration(self) -> bool:
        return self.calibrated

    def level(self) -> str:
        s = f"w{self.bits}g{self.group_size}+{self.keep:g}@{self.high_bits}"
        return s + ("sym" if self.sym else "") + ("" if self.saliency == "max_abs" else f"-{self.saliency}")

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        if self.calibrated:
            method = _MixedMethod(self)
            run_sequential(model, calib, self.targets, method, propagate=bool(self.propagate), desc="mixed")
            kept = method.kept
        else:
            kept = {}
            for name, lin in lins.items():
                sal = group_saliency(lin.weight.data, "max_abs", self.group_size)
                kept[name] = mixed_quant_(lin.weight.data, sal, self.keep, self.bits, self.high_bits,
                                          self.group_size, self.sym)
        n_w = bits_sum = overhead = groups_all = groups_high = 0.0
        for name, lin in lins.items():
            rows, cols = lin.weight.shape
            ng = n_groups(cols, self.group_size)
            high_groups = kept.get(name, 0)
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
