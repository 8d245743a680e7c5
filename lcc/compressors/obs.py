"""The OBS machinery SparseGPT and GPTQ share: dead inputs, the damped inverse Hessian, and the column walk.

Both reference implementations (IST-DASLab ``sparsegpt.fasterprune``, ``gptq.fasterquant``) walk the columns
of W with the upper Cholesky factor U of H⁻¹: each column is replaced by its compressed value q, and the
error (w - q) / U_ii is spread over the columns not yet visited; lazily, in blocks of ``blocksize`` columns
(within a block column by column, the rest of the matrix once per block). They differ only in how a column
is compressed (zeroed by a mask, or quantized on a grid), which :func:`obs_walk` takes as callbacks.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)


def prepare_hessian(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Dead inputs (zero diagonal: never active in calibration) get H_jj = 1 and their weights zeroed,
    as in the references. Modifies ``W`` and ``H`` in place; returns the dead mask."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return dead


def inverse_hessian_upper(H: torch.Tensor, percdamp: float, name: str = "", max_tries: int = 8
                          ) -> tuple[torch.Tensor, int, float]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = percdamp·mean(diag H), the matrix both OBS
    methods walk column by column. When a factorisation fails (singular or indefinite H, fp32
    round-off) λ is multiplied by 10 (starting from 0.01·mean diag if percdamp is 0) and the
    factorisation retried; every retry is logged with ``logging.warning``.

    Returns (Hinv_upper, number of retries, final percdamp)."""
    mean_diag = torch.mean(torch.diag(H)).item()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    damp = float(percdamp)
    for attempt in range(max_tries):
        Hd = H + (damp * mean_diag) * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if info.item() == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info2.item() == 0 and torch.isfinite(U).all():
                return U, attempt, damp
        new = damp * 10 if damp > 0 else 0.01
        log.warning("Cholesky of the Hessian of %s failed with percdamp=%g; retrying with percdamp=%g",
                    name or "a layer", damp, new)
        damp = new
    raise RuntimeError(f"Cholesky of the Hessian of {name or 'a layer'} failed even with percdamp={damp:g}")


#: ``column(W1, i, col) -> q``: the compressed value of column ``i`` of the block ``W1`` (a working copy with
#: the errors of the earlier columns already spread), ``col`` its index in W
Column = Callable[[torch.Tensor, int, int], torch.Tensor]
#: ``block(W1, Hinv1)``: called when a block starts (e.g. to choose the block's pruning mask)
Block = Callable[[torch.Tensor, torch.Tensor], None]


def obs_walk(W: torch.Tensor, Hinv: torch.Tensor, blocksize: int, column: Column, block: Block | None = None
             ) -> torch.Tensor:
    """Replace the columns of ``W`` (fp32, [rows, cols], changed in place) one by one by ``column(...)`` and
    spread each column's error over the later columns with ``Hinv`` (upper Cholesky factor of H⁻¹), in
    blocks of ``blocksize`` columns. Returns the OBS loss Σ (w - q)² / (2 [H⁻¹]_ii²) as a 0-d tensor."""
    cols = W.shape[1]
    loss = torch.zeros((), dtype=torch.float32, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if block is not None:
            block(W1, Hinv1)
        for i in range(i2 - i1):
            w = W1[:, i]
            q = column(W1, i, i1 + i)
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            loss += (err ** 2).sum() / 2
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return loss
