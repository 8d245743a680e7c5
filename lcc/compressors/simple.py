"""Calibration-free compressors: the dense baseline, magnitude pruning and round-to-nearest quantization."""
from __future__ import annotations

import torch

from lcc import ConfigError
from lcc.compressors.base import (Compressor, check_fraction, check_int, register, target_linears)
from lcc.compressors.quantize import effective_bits, fake_quant


def prune_smallest(weight: torch.Tensor, score: torch.Tensor, sparsity: float) -> int:
    """Zero exactly round(sparsity * numel) entries of ``weight`` with the lowest ``score``."""
    k = int(round(sparsity * weight.numel()))
    if k:
        idx = torch.topk(score.flatten(), k, largest=False, sorted=False).indices
        weight.view(-1)[idx] = 0
    return k


@register
class NoCompression(Compressor):
    """The dense model itself: KL against the dense run is exactly 0."""

    name = "none"

    def level(self) -> str:
        return "dense"

    def compress(self, model, calib=None):
        return {}


@register
class Magnitude(Compressor):
    """Magnitude pruning with a per-layer threshold: in every targeted Linear the ``sparsity`` fraction
    of weights with the smallest |w| is set to zero. With ``nm_n``/``nm_m`` > 0: N:M structured, keep the
    ``nm_n`` largest |w| of every ``nm_m`` consecutive input weights of each row (sparsity = 1 - N/M)."""

    name = "magnitude"
    cacheable = True
    params = {"sparsity": 0.5, "nm_n": 0, "nm_m": 0}

    @classmethod
    def check(cls, kw):
        from lcc.compressors.prune import check_nm
        check_fraction(kw, "sparsity")
        check_nm(kw)

    def level(self) -> str:
        return f"{self.nm_n}:{self.nm_m}" if self.nm_m else f"sparsity={self.sparsity}"

    @torch.no_grad()
    def compress(self, model, calib=None):
        from lcc.compressors.prune import check_nm_width, nm_prune_mask
        pruned = total = 0
        lins = target_linears(model, self.targets)
        for name, lin in lins.items():
            check_nm_width(lin.in_features, self.nm_m, name)
        for lin in lins.values():
            w = lin.weight.data
            if self.nm_m:
                mask = nm_prune_mask(w.abs(), self.nm_n, self.nm_m)
                w[mask] = 0
                pruned += int(mask.sum())
            else:
                pruned += prune_smallest(w, w.abs(), self.sparsity)
            total += w.numel()
        return {"sparsity_achieved": pruned / max(total, 1), "n_linears": len(lins)}


@register
class Quant(Compressor):
    """Weight-only round-to-nearest, asymmetric min/max per group of ``group_size`` input weights."""

    name = "quant"
    cacheable = True
    params = {"bits": 4, "group_size": 128, "sym": False}

    @classmethod
    def check(cls, kw):
        check_int(kw, "bits", 2, 8)
        check_int(kw, "group_size", -1, 1 << 20)
        if kw.get("group_size") == 0:
            raise ConfigError("group_size=0 is invalid; valid: a positive integer, or -1 for one group per row")

    def level(self) -> str:
        return f"w{self.bits}g{self.group_size}" + ("sym" if self.sym else "")

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        n_w = eff = 0.0
        for lin in lins.values():
            w = lin.weight.data
            w.copy_(fake_quant(w, self.bits, self.group_size, self.sym))
            eff += effective_bits(self.bits, w.shape[1], self.group_size) * w.numel()
            n_w += w.numel()
        return {"effective_bits": eff / max(n_w, 1), "n_linears": len(lins)}
