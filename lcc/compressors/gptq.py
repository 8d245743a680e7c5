"""GPTQ (Frantar et al. 2022, IST-DASLab/gptq): weight quantization with OBS error compensation.

Follows the reference ``GPTQ.fasterquant``: fp32 Hessian H = 2/n·ΣxxT over the calibration tokens, dead
inputs zeroed, damping λ = percdamp·mean(diag H), upper Cholesky factor of H⁻¹, columns quantized one at a
time in blocks of ``blocksize`` with the error spread over the not-yet-quantized columns, optional
``act_order`` (columns in decreasing diag H) and ``static_groups`` (group grids fixed from the original
weights before the walk, so act_order needs no group index reordering at inference).

The grid is the project's (``lcc.compressors.quantize``): asymmetric min/max with an integer zero point
(or symmetric), one (scale, zero) per group of ``group_size`` input weights, the last group shorter when
the width is not a multiple. Dynamic groups take their grid from the *current* (error-updated) weights
when the walk reaches the group's first column; the block size is aligned to the group size so that those
weights are always up to date (the reference reads stale weights when a group starts inside a block).

Deviation: when a Cholesky factorisation fails, damping is multiplied by 10 and retried (logged with
``logging.warning``, counted in the facts as ``cholesky_retries``) instead of aborting.
"""
from __future__ import annotations

from typing import Any

import torch

from lcc import ConfigError
from lcc.compressors.base import (Compressor, check_fraction, check_group_size, check_int, register,
                                  target_linears)
from lcc.compressors.engine import HessianStats, inverse_hessian_upper, prepare_hessian, run_sequential
from lcc.compressors.quantize import effective_bits, qparams


def _q(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    return (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero) * scale


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False,
                  act_order: bool = False, static_groups: bool = False, percdamp: float = 0.01,
                  blocksize: int = 128, zero_mask: torch.Tensor | None = None, name: str = ""
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Quantize ``W`` [rows, cols] given the Hessian ``H`` [cols, cols]; returns (Ŵ fp32, info).

    ``zero_mask`` (bool, True = must stay zero) makes GPTQ sparsity-aware: masked weights are set to
    zero instead of quantized and their error is compensated like any other (SparseGPT's joint mode)."""
    W = W.clone().float()
    H = H.clone().float()
    rows, cols = W.shape
    maxq = 2 ** bits - 1
    prepare_hessian(W, H)
    if zero_mask is not None:
        zero_mask = zero_mask.to(W.device).bool()
        W[zero_mask] = 0
    gs = group_size if 0 < group_size < cols else -1

    groups: list[tuple[torch.Tensor, torch.Tensor]] = []
    if gs > 0 and static_groups:
        for g0 in range(0, cols, gs):
            groups.append(qparams(W[:, g0:g0 + gs], bits, sym))
    scale = zero = None
    if gs <= 0:
        scale, zero = qparams(W, bits, sym)

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        if zero_mask is not None:
            zero_mask = zero_mask[:, perm]
    Hinv, retries, damp = inverse_hessian_upper(H, percdamp, name)

    if gs > 0 and not static_groups:
        bs = max(gs, (blocksize // gs) * gs) if gs <= blocksize else gs
    else:
        bs = blocksize
    Q = torch.zeros_like(W)
    loss = torch.zeros((), dtype=torch.float32, device=W.device)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            w = W1[:, i]
            d = Hinv1[i, i]
            if gs > 0:
                if static_groups:
                    src = int(perm[col]) if perm is not None else col
                    scale, zero = groups[src // gs]
                elif col % gs == 0:
                    scale, zero = qparams(W1[:, i:i + gs], bits, sym)
            q = _q(w.unsqueeze(1), scale, zero, maxq).flatten()
            if zero_mask is not None:
                q[zero_mask[:, col]] = 0
            Q1[:, i] = q
            loss += (((w - q) / d) ** 2).sum() / 2
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q, {"cholesky_retries": retries, "percdamp": damp, "loss": float(loss)}


class _GPTQMethod(HessianStats):
    def __init__(self, comp: "GPTQ"):
        super().__init__()
        self.c = comp
        self.retries = 0
        self.loss = 0.0

    def compress_layer(self, name, linear):
        c = self.c
        H = self.pop_hessian(name)
        w = linear.weight.data
        mask = (c.zero_masks or {}).get(name)
        Q, info = gptq_quantize(w.to(H.device), H, c.bits, c.group_size, c.sym, c.act_order, c.static_groups,
                                c.percdamp, c.blocksize, zero_mask=mask, name=name)
        w.copy_(Q.to(w.dtype))
        self.retries += info["cholesky_retries"]
        self.loss += info["loss"]
        return info


@register
class GPTQ(Compressor):
    """GPTQ weight-only quantization (calibrated, sequential over the blocks)."""

    name = "gptq"
    cacheable = True
    params = {"bits": 4, "group_size": 128, "sym": False, "act_order": False, "static_groups": False,
              "percdamp": 0.01, "blocksize": 128, "propagate": True}
    calibrated = True

    @classmethod
    def check(cls, kw):
        check_int(kw, "bits", 2, 8)
        check_group_size(kw)
        check_int(kw, "blocksize", 1, 1 << 16)
        check_fraction(kw, "percdamp", lo_closed=True, hi_closed=True)
        for k in ("sym", "act_order", "static_groups", "propagate"):
            if k in kw and not isinstance(kw[k], bool):
                raise ConfigError(f"{k}={kw[k]!r} is invalid; valid: true or false")

    def __init__(self, targets=None, **kw):
        super().__init__(targets, **kw)
        #: {qualified Linear name: bool mask of weights that must stay zero}; set by ``compose``.
        self.zero_masks: dict[str, torch.Tensor] | None = None

    def level(self) -> str:
        return (f"w{self.bits}g{self.group_size}" + ("sym" if self.sym else "")
                + ("-act" if self.act_order else "") + ("-static" if self.static_groups else ""))

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        method = _GPTQMethod(self)
        run_sequential(model, calib, self.targets, method, propagate=bool(self.propagate), desc="gptq")
        n_w = sum(lin.weight.numel() for lin in lins.values())
        eff = sum(effective_bits(self.bits, lin.in_features, self.group_size) * lin.weight.numel()
                  for lin in lins.values())
        return {"effective_bits": eff / max(n_w, 1), "n_linears": len(lins),
                "cholesky_retries": method.retries, "gptq_loss": method.loss}
