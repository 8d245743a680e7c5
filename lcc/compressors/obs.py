"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

The OBS machinery SparseGPT and GPTQ share: dead inputs, the damped inverse Hessian, and the column walk.

Both reference implementations (IST-DASLab ``sparsegpt.fasterprune``, ``gptq.fasterquant``) walk the columns
of W with the upper Cholesky factor U of H⁻¹: each column is replaced by its compressed value q, and the
error (w - q) / U_ii is spread over the columns not yet visited; lazily, in blocks of ``blocksize`` columns
(within a block column by column, the rest of the matrix once per block). They differ only in how a column
is compressed (zeroed by a mask, or quantized on a grid), which :func:`obs_walk` takes as a
:class:`ColumnRule`.

The walk acts within rows given one Hessian, so Linears that share an input (q/k/v, gate/up) are walked once
on their stacked rows (``lcc.compressors.engine``'s groups) with the same result row for row. Nothing inside
the walk reads back to the host; on CUDA the column loop of a block is captured once as a CUDA graph and
replayed for every block (the per-column kernel launches dominated otherwise); ``LCC_OBS_GRAPH=0`` turns
that off.
"""
from __future__ import annotations

import logging
import os

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


class ColumnRule:
    """How the walk compresses the columns of one block of ``W`` (SparseGPT: by a mask, GPTQ: on a grid).

    ``start(i1, i2)`` runs on the host before each block (columns i1..i2-1 of W): it may only *copy* the
    block's slice of per-column data into tensors it owns (the same tensors every block). ``block(W1, Hinv1)``
    and ``column(W1, i) -> q`` run on the device, ``i`` the column's index within the block; they must not
    read anything back to the host (no ``.item()``, ``int(tensor)``, boolean indexing), so that on CUDA a
    block can be captured once as a graph and replayed. For the same reason their Python side effects run only
    when a block is traced (possibly twice for one block: warm-up and capture), never per replay: what a rule
    records must be written into tensors it owns and read back in ``finish(i1, i2)``, which runs on the host
    after every block, replayed or not."""

    def start(self, i1: int, i2: int) -> None:
        pass

    def finish(self, i1: int, i2: int) -> None:
        pass

    def block(self, W1: torch.Tensor, Hinv1: torch.Tensor) -> None:
        pass

    def column(self, W1: torch.Tensor, i: int) -> torch.Tensor:
        raise NotImplementedError


def _walk_block(W1: torch.Tensor, Hinv1: torch.Tensor, rule: ColumnRule
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The within-block walk: columns one by one, each error spread over the block's later columns.
    ``W1`` is changed in place; returns (Q1 compressed columns, Err1 scaled errors, loss per row)."""
    rule.block(W1, Hinv1)
    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    loss = torch.zeros(W1.shape[0], dtype=W1.dtype, device=W1.device)
    for i in range(W1.shape[1]):
        w = W1[:, i]
        q = rule.column(W1, i)
        Q1[:, i] = q
        err = (w - q) / Hinv1[i, i]
        loss += err ** 2 / 2
        W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
        Err1[:, i] = err
    return Q1, Err1, loss


def graphs_enabled(W: torch.Tensor) -> bool:
    """CUDA graphs for the within-block walk: on CUDA unless ``LCC_OBS_GRAPH=0``."""
    return W.is_cuda and os.environ.get("LCC_OBS_GRAPH", "1") != "0"


class _GraphedBlock:
    """The within-block walk of one (rows, width) captured once as a CUDA graph and replayed per block: the
    walk is ~10 small kernels per column, so on a GPU its cost is the launches, which a replay removes.
    The first block runs eagerly on a side stream (the warm-up capture needs), then the graph is recorded;
    every later block copies its inputs into the graph's input tensors and replays."""

    def __init__(self, W1: torch.Tensor, Hinv1: torch.Tensor, rule: ColumnRule):
        self.W1 = W1.clone()
        self.Hinv1 = Hinv1.clone()
        side = torch.cuda.Stream(device=W1.device)
        side.wait_stream(torch.cuda.current_stream(W1.device))
        with torch.cuda.stream(side):
            self.first = _walk_block(self.W1, self.Hinv1, rule)  # block 1's result, and the warm-up
            self.first = tuple(t.clone() for t in self.first)
        main = torch.cuda.current_stream(W1.device)
        main.wait_stream(side)
        for t in self.first:  # made on the side stream, used on the main one
            t.record_stream(main)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = _walk_block(self.W1, self.Hinv1, rule)

    def __call__(self, W1: torch.Tensor, Hinv1: torch.Tensor):
        self.W1.copy_(W1)
        self.Hinv1.copy_(Hinv1)
        self.graph.replay()
        return self.out


def obs_walk(W: torch.Tensor, Hinv: torch.Tensor, blocksize: int, rule: ColumnRule) -> torch.Tensor:
    """Replace the columns of ``W`` (fp32, [rows, cols], changed in place) one by one by ``rule.column`` and
    spread each column's error over the later columns with ``Hinv`` (upper Cholesky factor of H⁻¹), in
    blocks of ``blocksize`` columns. Returns the OBS loss Σ (w - q)² / (2 [H⁻¹]_ii²) of every row ([rows]);
    nothing is read back to the host. On CUDA the within-block walk is a replayed CUDA graph (one per block
    width; ``LCC_OBS_GRAPH=0`` runs it eagerly, the same kernels)."""
    cols = W.shape[1]
    loss = torch.zeros(W.shape[0], dtype=torch.float32, device=W.device)
    graphs: dict[int, _GraphedBlock | None] = {}
    use_graphs = graphs_enabled(W)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        rule.start(i1, i2)
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        width = i2 - i1
        if not use_graphs or (width in graphs and graphs[width] is None):
            Q1, Err1, l1 = _walk_block(W1, Hinv1, rule)
        elif width not in graphs:
            try:
                graphs[width] = g = _GraphedBlock(W1, Hinv1, rule)
                Q1, Err1, l1 = g.first
            except RuntimeError as e:  # capture not possible here: the eager walk, the same kernels
                log.warning("CUDA graph capture of the OBS walk failed (%s); walking eagerly", e)
                graphs[width] = None
                Q1, Err1, l1 = _walk_block(W1, Hinv1, rule)
        else:
            Q1, Err1, l1 = graphs[width](W1, Hinv1)
        rule.finish(i1, i2)
        loss += l1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return loss
