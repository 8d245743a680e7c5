"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Calibration-free compressors: the dense baseline and round-to-nearest weight quantization.
(Magnitude pruning lives with the other pruning methods in ``prune.py``.)"""
from __future__ import annotations

import torch

from lcc.compressors.base import Compressor, Storage, groups, ints, param, target_linears
from lcc.compressors.quantize import fake_quant_linears


class NoCompression(Compressor):
    """The dense model itself: KL against the dense run is exactly 0."""

    name = "none"
    uses_targets = False

    def level(self) -> str:
        return "dense"

    def compress(self, model, calib=None):
        return {}


class Quant(Compressor):
    """Weight-only round-to-nearest, asymmetric min/max per group of ``group_size`` input weights."""

    name = "quant"
    bits: int = param(4, "bits per weight", ints(2, 8))
    group_size: int = param(128, "input weights per (scale, zero) group; -1 = one group per row", groups())
    sym: bool = param(False, "false: asymmetric min/max with an integer zero point; true: symmetric absmax")

    def level(self) -> str:
        return f"w{self.bits}g{self.group_size}" + ("sym" if self.sym else "")

    def storage(self) -> Storage:
        return Storage.WEIGHTS

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        self.clear_grids()
        eff, n_w = fake_quant_linears(lins, self.bits, self.group_size, self.sym, record=self.record_grid)
        return {"effective_bits": eff / max(n_w, 1), "n_linears": len(lins)}
