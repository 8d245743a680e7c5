"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

GPTQ (Frantar et al. 2022, IST-DASLab/gptq): weight quantization with OBS error compensation.

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

from lcc.compressors.base import Storage, fraction, groups, ints, param
from lcc.compressors.engine import Calibrated, HessianStats
from lcc.compressors.obs import ColumnRule, inverse_hessian_upper, obs_walk, prepare_hessian
from lcc.compressors.quantize import QuantGrid, effective_bits, qparams


def _q(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    return (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero) * scale


class _GridColumns(ColumnRule):
    """GPTQ's column rule: quantize the column on its group's grid; dynamic groups take the grid from the
    current weights at a group's first column (the block size is a multiple of the group size, so that is
    where ``i % gs == 0``); static groups (and act_order) read every column's grid from per-column tensors
    gathered once per block; masked weights (``zero_mask``) become zero."""

    def __init__(self, rows: int, bs: int, bits: int, sym: bool, gs: int, grid=None, col_grid=None,
                 zero_mask=None, device=None):
        self.bits, self.sym, self.gs, self.maxq = bits, sym, gs, 2 ** bits - 1
        self.grid = grid  # (scale, zero) [rows, 1]: one group per row, or the current dynamic group's
        self.col_grid = col_grid  # (scale [rows, n_groups], zero, group of every walked column [cols], device)
        self.zero_mask = zero_mask
        self.walked: list[tuple[torch.Tensor, torch.Tensor]] = []  # dynamic groups' grids, in walk order
        if col_grid is None and gs > 0:  # the block's dynamic grids, written on the device (graph-safe)
            self.gscale = torch.empty(rows, -(-bs // gs), dtype=torch.float32, device=device)
            self.gzero = torch.empty_like(self.gscale)
        if col_grid is not None:
            self.bscale = torch.empty(rows, bs, dtype=col_grid[0].dtype, device=col_grid[0].device)
            self.bzero = torch.empty_like(self.bscale)
        if zero_mask is not None:
            self.bmask = torch.zeros(zero_mask.shape[0], bs, dtype=torch.bool, device=zero_mask.device)

    def start(self, i1, i2):
        n = i2 - i1
        if self.col_grid is not None:
            scale, zero, gcol = self.col_grid
            self.bscale[:, :n].copy_(scale.index_select(1, gcol[i1:i2]))
            self.bzero[:, :n].copy_(zero.index_select(1, gcol[i1:i2]))
        if self.zero_mask is not None:
            self.bmask[:, :n].copy_(self.zero_mask[:, i1:i2])

    def finish(self, i1, i2):
        if self.col_grid is None and self.gs > 0:  # group k covers walked columns k*gs..(k+1)*gs-1
            n = -(-(i2 - i1) // self.gs)
            self.walked.append((self.gscale[:, :n].clone(), self.gzero[:, :n].clone()))

    def column(self, W1, i):
        if self.col_grid is not None:
            scale, zero = self.bscale[:, i:i + 1], self.bzero[:, i:i + 1]
        else:
            if self.gs > 0 and i % self.gs == 0:
                self.grid = qparams(W1[:, i:i + self.gs], self.bits, self.sym)
                k = i // self.gs
                self.gscale[:, k:k + 1].copy_(self.grid[0])
                self.gzero[:, k:k + 1].copy_(self.grid[1])
            scale, zero = self.grid
        q = _q(W1[:, i].unsqueeze(1), scale, zero, self.maxq).flatten()
        if self.zero_mask is not None:
            q = q.masked_fill(self.bmask[:, i], 0)
        return q


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False,
                  act_order: bool = False, static_groups: bool = False, percdamp: float = 0.01,
                  blocksize: int = 128, zero_mask: torch.Tensor | None = None, name: str = "",
                  row_splits: list[int] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Quantize ``W`` [rows, cols] given the Hessian ``H`` [cols, cols]; returns (Ŵ fp32, info), ``info["grid"]``
    the :class:`QuantGrid` Ŵ lies on (with ``g_idx`` for act-order with dynamic groups).

    ``zero_mask`` (bool, True = must stay zero) makes GPTQ sparsity-aware: masked weights are set to
    zero instead of quantized and their error is compensated like any other (SparseGPT's joint mode).
    ``row_splits``: ``W`` is several Linears' weights stacked row-wise (same input, same H), this many rows
    each; every row is quantized exactly as alone (the walk acts within rows), and ``info["loss"]`` is then a
    list, one loss per part. The loss is read back to the host once."""
    W = W.clone(memory_format=torch.contiguous_format).float()  # contiguous also for a transposed view
    H = H.clone().float()
    rows, cols = W.shape
    prepare_hessian(W, H)
    if zero_mask is not None:
        zero_mask = zero_mask.to(W.device).bool()
        W.masked_fill_(zero_mask, 0)
    gs = group_size if 0 < group_size < cols else -1

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
    col_grid = None
    if gs > 0 and static_groups:  # grids from the original weights, gathered per walked column
        grids = [qparams(W[:, g0:g0 + gs], bits, sym) for g0 in range(0, cols, gs)]
        gcol = torch.arange(cols, device=W.device) // gs
        if perm is not None:
            gcol = gcol[perm]
        col_grid = (torch.cat([g[0] for g in grids], 1), torch.cat([g[1] for g in grids], 1), gcol)
    grid = qparams(W, bits, sym) if gs <= 0 else None

    if perm is not None:
        W = W[:, perm]
        H = H[perm][:, perm]
        if zero_mask is not None:
            zero_mask = zero_mask[:, perm]
    Hinv, retries, damp = inverse_hessian_upper(H, percdamp, name)

    if gs > 0 and not static_groups:
        bs = max(gs, (blocksize // gs) * gs) if gs <= blocksize else gs
    else:
        bs = blocksize

    rule = _GridColumns(rows, min(bs, cols), bits, sym, gs, grid=grid, col_grid=col_grid, zero_mask=zero_mask,
                        device=W.device)
    loss_rows = obs_walk(W, Hinv, bs, rule)
    g_idx = None
    if perm is not None:
        W = W[:, torch.argsort(perm)]
        if gs > 0 and not static_groups:  # column perm[j] was walked j-th
            g_idx = torch.empty_like(perm).scatter_(0, perm, torch.arange(cols, device=perm.device) // gs)
    if row_splits is None:
        loss: Any = float(loss_rows.sum())
    else:
        loss = torch.stack([p.sum() for p in loss_rows.split(row_splits)]).tolist()
    if gs <= 0:
        scale, zero = grid
    elif static_groups:
        scale, zero = col_grid[0], col_grid[1]
    else:
        scale, zero = (torch.cat([g[k] for g in rule.walked], 1) for k in (0, 1))
    return W, {"cholesky_retries": retries, "percdamp": damp, "loss": loss,
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

    def compress_group(self, names, linears, H):
        """One walk over the members' stacked rows (same input, same H), split back; facts per member."""
        if len(linears) == 1:
            return {names[0]: self.compress_layer(names[0], linears[0], H)}
        ws = [lin.weight.data for lin in linears]
        masks = [(self.zero_masks or {}).get(n) for n in names]
        mask = None
        if any(m is not None for m in masks):
            mask = torch.cat([(m if m is not None else torch.zeros(w.shape, dtype=torch.bool)).to(H.device).bool()
                              for m, w in zip(masks, ws)])
        splits = [w.shape[0] for w in ws]
        Q, info = gptq_quantize(torch.cat([w.to(H.device) for w in ws]), H, self.bits, self.group_size, self.sym,
                                self.act_order, self.static_groups, self.percdamp, self.blocksize, zero_mask=mask,
                                name="+".join(names), row_splits=splits)
        grid = info.pop("grid")
        for n, w, q, s, z in zip(names, ws, Q.split(splits), grid.scale.split(splits), grid.zero.split(splits)):
            w.copy_(q.to(w.dtype))
            self.record_grid(n, QuantGrid(grid.bits, grid.group_size, s, z, grid.g_idx))
        return {n: {**info, "loss": loss} for n, loss in zip(names, info["loss"])}

    def facts(self, lins, layer_facts):
        n_w = sum(lin.weight.numel() for lin in lins.values())
        eff = sum(effective_bits(self.bits, lin.in_features, self.group_size) * lin.weight.numel()
                  for lin in lins.values())
        return {"effective_bits": eff / max(n_w, 1), "n_linears": len(lins),
                "cholesky_retries": sum(f["cholesky_retries"] for f in layer_facts.values()),
                "gptq_loss": sum((f["loss"] for f in layer_facts.values()), 0.0)}
