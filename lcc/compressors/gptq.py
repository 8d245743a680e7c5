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

from lcc.compressors.base import QuantGrid, Storage, fraction, groups, ints, param
from lcc.compressors.engine import Calibrated, HessianStats
from lcc.compressors.obs import inverse_hessian_upper, obs_walk, prepare_hessian
from lcc.compressors.quantize import effective_bits, qparams


def _q(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    return (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero) * scale


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False,
                  act_order: bool = False, static_groups: bool = False, percdamp: float = 0.01,
                  blocksize: int = 128, zero_mask: torch.Tensor | None = None, name: str = ""
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Quantize ``W`` [rows, cols] given the Hessian ``H`` [cols, cols]; returns (Ŵ fp32, info), ``info["grid"]``
    the :class:`QuantGrid` Ŵ lies on (with ``g_idx`` for act-order with dynamic groups).

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
    grid = qparams(W, bits, sym) if gs <= 0 else None  # (scale, zero) of the current group

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

    def column(W1: torch.Tensor, i: int, col: int) -> torch.Tensor:
        nonlocal grid
        if gs > 0:
            if static_groups:
                grid = groups[(int(perm[col]) if perm is not None else col) // gs]
            elif col % gs == 0:
                grid = qparams(W1[:, i:i + gs], bits, sym)
                groups.append(grid)  # in walk order: group k covers walked columns k*gs..(k+1)*gs-1
        q = _q(W1[:, i].unsqueeze(1), grid[0], grid[1], maxq).flatten()
        if zero_mask is not None:
            q[zero_mask[:, col]] = 0
        return q

    loss = obs_walk(W, Hinv, bs, column)
    g_idx = None
    if perm is not None:
        W = W[:, torch.argsort(perm)]
        if gs > 0 and not static_groups:  # column perm[j] was walked j-th
            g_idx = torch.empty_like(perm).scatter_(0, perm, torch.arange(cols, device=perm.device) // gs)
    scale, zero = (torch.cat([g[k] for g in groups], 1) for k in (0, 1)) if gs > 0 else grid
    return W, {"cholesky_retries": retries, "percdamp": damp, "loss": float(loss),
               "grid": QuantGrid(bits, gs, scale, zero, g_idx)}


class GPTQ(Calibrated):
    """GPTQ weight-only quantization (calibrated, sequential over the blocks)."""

    name = "gptq"
    stats = HessianStats
    bits: int = param(4, "bits per weight", ints(2, 8))
    group_size: int = param(128, "input weights per (scale, zero) group; -1 = one group per row; the last "
                                 "group is shorter if needed", groups())
    sym: bool = param(False, "false: asymmetric min/max with an integer zero point (as quant); true: "
                             "symmetric absmax")
    act_order: bool = param(False, "quantize the columns in decreasing diag(H) order")
    static_groups: bool = param(False, "fix every group's grid from the original weights before the walk")
    percdamp: float = param(0.01, "damping = percdamp * mean(diag H); raised x10 and retried (logged) if "
                                  "Cholesky fails", fraction(hi_closed=True))
    blocksize: int = param(128, "columns per lazy-update block (aligned to group_size)", ints(1, 1 << 16))

    def __post_init__(self):
        super().__post_init__()
        #: {qualified Linear name: bool mask of weights that must stay zero}; set by ``compose``.
        self.zero_masks: dict[str, torch.Tensor] | None = None

    def storage(self) -> Storage:
        return Storage.WEIGHTS

    def keep_zeros(self, masks):
        self.zero_masks = masks

    def level(self) -> str:
        return (f"w{self.bits}g{self.group_size}" + ("sym" if self.sym else "")
                + ("-act" if self.act_order else "") + ("-static" if self.static_groups else ""))

    def compress_layer(self, name, linear, H):
        w = linear.weight.data
        mask = (self.zero_masks or {}).get(name)
        Q, info = gptq_quantize(w.to(H.device), H, self.bits, self.group_size, self.sym, self.act_order,
                                self.static_groups, self.percdamp, self.blocksize, zero_mask=mask, name=name)
        w.copy_(Q.to(w.dtype))
        self.record_grid(name, info.pop("grid"))
        return info

    def facts(self, lins, layer_facts):
        n_w = sum(lin.weight.numel() for lin in lins.values())
        eff = sum(effective_bits(self.bits, lin.in_features, self.group_size) * lin.weight.numel()
                  for lin in lins.values())
        return {"effective_bits": eff / max(n_w, 1), "n_linears": len(lins),
                "cholesky_retries": sum(f["cholesky_retries"] for f in layer_facts.values()),
                "gptq_loss": sum((f["loss"] for f in layer_facts.values()), 0.0)}
