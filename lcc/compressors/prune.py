"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Pruning: magnitude, random, Wanda and SparseGPT, and the N:M structured option they share.

N:M convention (the one of this project, everywhere): ``nm_n`` is the number of weights **kept**
(non-zero) in every group of ``nm_m`` consecutive input weights of a row, so 2:4 keeps 2 of every 4.
Beware that the Wanda and SparseGPT reference scripts call the *pruned* count ``prune_n``; for 2:4 and
4:8 both readings coincide, for 1:4 they do not. ``nm_n = nm_m = 0`` means unstructured.
"""
from __future__ import annotations

from typing import Any

import torch

from lcc import ConfigError
from lcc.compressors.base import UNSET, Compressor, Storage, fraction, ints, param, target_linears
from lcc.compressors.engine import Calibrated, HessianStats, NormStats
from lcc.compressors.obs import ColumnRule, inverse_hessian_upper, obs_walk, prepare_hessian


# ---- N:M helpers ---------------------------------------------------------------------------------
def check_nm_width(width: int, m: int, name: str) -> None:
    if m and width % m:
        raise ConfigError(f"nm_m={m} does not divide the input width {width} of {name}; "
                          f"valid: an nm_m that divides every targeted layer's input width")


def nm_prune_mask(score: torch.Tensor, n_keep: int, m: int) -> torch.Tensor:
    """True where a weight is pruned: in every group of ``m`` consecutive columns of each row the
    ``m - n_keep`` lowest scores."""
    rows, cols = score.shape
    s = score.reshape(rows, cols // m, m)
    idx = torch.topk(s, m - n_keep, dim=-1, largest=False).indices
    mask = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def prune_smallest(weight: torch.Tensor, score: torch.Tensor, sparsity: float) -> int:
    """Zero exactly round(sparsity * numel) entries of ``weight`` with the lowest ``score``."""
    k = int(round(sparsity * weight.numel()))
    if k:
        idx = torch.topk(score.flatten(), k, largest=False, sorted=False).indices
        if weight.is_contiguous():
            weight.view(-1)[idx] = 0
        else:  # a transposed view (gpt-oss experts, Conv1D): the same entries through a mask
            mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
            mask[idx] = True
            weight[mask.view(weight.shape)] = 0
    return k


def _sparsity_facts(lins: dict[str, torch.nn.Linear]) -> dict[str, Any]:
    zeros = sum(int((lin.weight == 0).sum()) for lin in lins.values())
    total = sum(lin.weight.numel() for lin in lins.values())
    return {"sparsity_achieved": zeros / max(total, 1), "n_linears": len(lins)}


#: ``sparsity`` given together with N:M must equal 1 - nm_n/nm_m to this tolerance (so that the 6 significant
#: digits an error message prints are accepted); it is then set to exactly 1 - nm_n/nm_m.
NM_SPARSITY_TOL = 1e-6


class NMPruner(Compressor):
    """Base of the pruners that take ``sparsity`` or N:M structure (magnitude, wanda, sparsegpt)."""

    sparsity: float | None = param(UNSET, "fraction of weights set to zero; with N:M it must equal 1 - nm_n/nm_m, "
                                          "or be null (then taken from N:M); left out in Python: 0.5, or 1 - "
                                          "nm_n/nm_m with N:M", fraction(), config=0.5)
    nm_n: int = param(0, "N:M structured sparsity: KEEP nm_n non-zeros in every nm_m consecutive input weights "
                         "(2:4 -> nm_n=2, nm_m=4); both 0 = unstructured", ints(0, 1 << 16))
    nm_m: int = param(0, "group width of N:M (0 = unstructured). NB: the Wanda/SparseGPT scripts' prune_n "
                         "counts PRUNED weights", ints(0, 1 << 16))

    def check(self):
        n, m = self.nm_n, self.nm_m
        if (n == 0) != (m == 0):
            raise ConfigError(f"nm_n={n!r}, nm_m={m!r} is invalid; valid: both 0 (unstructured) or "
                              f"0 < nm_n < nm_m (keep nm_n of every nm_m consecutive input weights)")
        if m and not n < m:
            raise ConfigError(f"nm_n={n!r} must be smaller than nm_m={m!r} (nm_n = weights kept per group of "
                              f"nm_m)")
        s = self.sparsity
        if s is UNSET:
            s = self.sparsity = None if m else 0.5
        if m and s is not None and abs(float(s) - (1 - n / m)) > NM_SPARSITY_TOL:
            raise ConfigError(f"sparsity={s!r} contradicts N:M {n}:{m}, which prunes {1 - n / m:.6g} of the weights; "
                              f"valid: sparsity={1 - n / m:.6g} or sparsity=null (then taken from N:M)")
        if not m and s is None:
            raise ConfigError("sparsity=None is invalid without N:M; valid: a number in [0, 1), or null together "
                              "with nm_n/nm_m > 0")
        if m:
            self.sparsity = 1 - n / m

    def level(self) -> str:
        return f"{self.nm_n}:{self.nm_m}" if self.nm_m else f"sparsity={self.sparsity}"

    def prunes(self) -> bool:
        return True

    def check_linears(self, lins: dict[str, torch.nn.Linear]) -> None:
        """nm_m must divide every targeted Linear's input width."""
        for name, lin in lins.items():
            check_nm_width(lin.in_features, self.nm_m, name)


# ---- magnitude -----------------------------------------------------------------------------------
class Magnitude(NMPruner):
    """Magnitude pruning with a per-layer threshold: in every targeted Linear the ``sparsity`` fraction
    of weights with the smallest |w| is set to zero. With ``nm_n``/``nm_m`` > 0: N:M structured, keep the
    ``nm_n`` largest |w| of every ``nm_m`` consecutive input weights of each row (sparsity = 1 - N/M)."""

    name = "magnitude"

    def storage(self) -> Storage:
        return Storage.MASK

    @torch.no_grad()
    def compress(self, model, calib=None):
        pruned = total = 0
        lins = target_linears(model, self.targets)
        self.check_linears(lins)
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


# ---- random --------------------------------------------------------------------------------------
class RandomPrune(Compressor):
    """Zero exactly round(sparsity · numel) uniformly random weights of every targeted Linear (seeded).
    The floor every informed pruning method must beat."""

    name = "random"
    sparsity: float = param(0.5, "fraction of the weights of every targeted Linear set to zero", fraction())
    seed: int = param(0, "own seed, independent of the evaluation seed", ints(0, 2 ** 63 - 1))

    def level(self) -> str:
        return f"sparsity={self.sparsity}"

    def storage(self) -> Storage:
        return Storage.MASK

    def prunes(self) -> bool:
        return True

    @torch.no_grad()
    def compress(self, model, calib=None):
        g = torch.Generator().manual_seed(int(self.seed))
        lins = target_linears(model, self.targets)
        for lin in lins.values():
            w = lin.weight.data
            prune_smallest(w, torch.rand(w.shape, generator=g).to(w.device), self.sparsity)
        return _sparsity_facts(lins)


# ---- Wanda ---------------------------------------------------------------------------------------
def wanda_prune_(weight: torch.Tensor, norms: torch.Tensor, sparsity: float, n_keep: int = 0, m: int = 0) -> None:
    """Wanda in place: score |W_ij|·‖X_j‖₂; each output row prunes its own int(cols·sparsity) lowest
    scores (the reference's per-output comparison group), or the N:M pattern."""
    score = weight.float().abs() * norms.to(weight.device).float().reshape(1, -1)
    if m:
        mask = nm_prune_mask(score, n_keep, m)
    else:
        k = int(weight.shape[1] * sparsity)
        mask = torch.zeros_like(score, dtype=torch.bool)
        if k:
            idx = torch.sort(score, dim=-1, stable=True).indices[:, :k]
            mask.scatter_(1, idx, True)
    weight[mask] = 0


class Wanda(NMPruner, Calibrated):
    """Wanda (Sun et al. 2023, locuslab/wanda): prune by |W|·‖X‖ without weight update."""

    name = "wanda"
    stats = NormStats

    def storage(self) -> Storage:
        return Storage.MASK

    def compress_layer(self, name, linear, norms):
        wanda_prune_(linear.weight.data, norms, self.sparsity, self.nm_n, self.nm_m)

    def facts(self, lins, layer_facts):
        return _sparsity_facts(lins)


# ---- SparseGPT -----------------------------------------------------------------------------------
class _MaskColumns(ColumnRule):
    """SparseGPT's column rule: the column with its pruned weights zeroed. Unstructured: the mask of a whole
    block is chosen when the block starts, over each part's rows separately (``row_splits``: stacked Linears,
    each gets the reference's per-matrix block threshold); N:M: the ``m - n_keep`` lowest of every ``m``
    columns of each row when the walk reaches them."""

    def __init__(self, sparsity: float, n_keep: int, m: int, row_splits: list[int]):
        self.sparsity, self.m, self.prune_k = sparsity, m, (m - n_keep if m else 0)
        self.row_splits = row_splits

    def block(self, W1, Hinv1):
        n = W1.shape[1]
        self.dg = torch.diag(Hinv1)
        self.mask1 = mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if not self.m:
            # adaptive mask of the block; exactly int(numel·sparsity) entries per part (the reference's
            # `tmp <= sorted[k]` takes one more, plus ties)
            tmp = W1 ** 2 / self.dg.reshape(1, -1) ** 2
            r0 = 0
            for r in self.row_splits:
                k = int(r * n * self.sparsity)
                if k:
                    part = mask1[r0:r0 + r].reshape(-1)  # a view: rows are contiguous in the mask
                    part.scatter_(0, torch.topk(tmp[r0:r0 + r].reshape(-1), k, largest=False).indices, True)
                r0 += r

    def column(self, W1, i):
        m = self.m
        if m and i % m == 0:
            tmp = W1[:, i:i + m] ** 2 / self.dg[i:i + m].reshape(1, -1) ** 2
            self.mask1.scatter_(1, i + torch.topk(tmp, self.prune_k, dim=1, largest=False).indices, True)
        return W1[:, i].masked_fill(self.mask1[:, i], 0)


def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float, n_keep: int = 0, m: int = 0,
                    blocksize: int = 128, percdamp: float = 0.01, name: str = "",
                    row_splits: list[int] | None = None) -> tuple[torch.Tensor, int]:
    """SparseGPT (Frantar & Alistarh 2023) on fp32 copies: OBS reconstruction column by column with the
    upper Cholesky factor of H⁻¹; in blocks of ``blocksize`` columns, the unstructured mask of a block is
    chosen adaptively from w²/[H⁻¹]_jj² over the whole block (as the reference); N:M picks the
    ``m - n_keep`` lowest of every ``m`` columns when the walk reaches them. ``row_splits``: ``W`` is several
    Linears stacked row-wise (same input and H), this many rows each; each part's block mask is chosen over
    its own rows, so the result equals separate walks. Returns (Ŵ, Cholesky retries)."""
    W = W.clone(memory_format=torch.contiguous_format).float()  # contiguous also for a transposed view
    H = H.clone().float()
    prepare_hessian(W, H)
    Hinv, retries, _ = inverse_hessian_upper(H, percdamp, name)
    bs = max(m, (blocksize // m) * m) if m else blocksize
    rule = _MaskColumns(sparsity, n_keep, m, row_splits or [W.shape[0]])
    obs_walk(W, Hinv, bs, rule)
    return W, retries


class SparseGPT(NMPruner, Calibrated):
    """SparseGPT (IST-DASLab/sparsegpt): one-shot pruning with OBS weight reconstruction."""

    name = "sparsegpt"
    stats = HessianStats
    blocksize: int = param(128, "columns per lazy-update block; the unstructured mask is chosen per block "
                                "(adaptive)", ints(1, 1 << 16))
    percdamp: float = param(0.01, "damping = percdamp * mean(diag H); raised x10 and retried (logged) if "
                                  "Cholesky fails", fraction(hi_closed=True))

    def storage(self) -> Storage:
        return Storage.WEIGHTS  # it also updates the weights it keeps

    def compress_layer(self, name, linear, H):
        w = linear.weight.data
        new, r = sparsegpt_prune(w.to(H.device), H, self.sparsity, self.nm_n, self.nm_m, self.blocksize,
                                 self.percdamp, name)
        w.copy_(new.to(w.dtype))
        return {"cholesky_retries": r}

    def compress_group(self, names, linears, H):
        """One walk over the members' stacked rows (same input, same H), each member's block mask chosen over
        its own rows, split back. The Cholesky retries of the shared H are counted for every member."""
        if len(linears) == 1:
            return {names[0]: self.compress_layer(names[0], linears[0], H)}
        ws = [lin.weight.data for lin in linears]
        splits = [w.shape[0] for w in ws]
        new, r = sparsegpt_prune(torch.cat([w.to(H.device) for w in ws]), H, self.sparsity, self.nm_n, self.nm_m,
                                 self.blocksize, self.percdamp, "+".join(names), row_splits=splits)
        for w, q in zip(ws, new.split(splits)):
            w.copy_(q.to(w.dtype))
        return {n: {"cholesky_retries": r} for n in names}

    def facts(self, lins, layer_facts):
        return {**_sparsity_facts(lins), "cholesky_retries": sum(f["cholesky_retries"] for f in layer_facts.values())}
