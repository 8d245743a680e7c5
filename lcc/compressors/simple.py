"""Calibration-free compressors: the dense baseline and round-to-nearest weight quantization.
(Magnitude pruning lives with the other pruning methods in ``prune.py``.)"""
from __future__ import annotations

import torch

from lcc.compressors.base import Compressor, check_group_size, check_int, register, target_linears
from lcc.compressors.quantize import fake_quant_linears


@register
class NoCompression(Compressor):
    """The dense model itself: KL against the dense run is exactly 0."""

    name = "none"
    uses_targets = False

    def level(self) -> str:
        return "dense"

    def compress(self, model, calib=None):
        return {}


@register
class Quant(Compressor):
    """Weight-only round-to-nearest, asymmetric min/max per group of ``group_size`` input weights."""

    name = "quant"
    cacheable = True
    params = {"bits": 4, "group_size": 128, "sym": False}

    @classmethod
    def check(cls, kw):
        check_int(kw, "bits", 2, 8)
        check_group_size(kw)

    def level(self) -> str:
        return f"w{self.bits}g{self.group_size}" + ("sym" if self.sym else "")

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        eff, n_w = fake_quant_linears(lins.values(), self.bits, self.group_size, self.sym)
        return {"effective_bits": eff / max(n_w, 1), "n_linears": len(lins)}
