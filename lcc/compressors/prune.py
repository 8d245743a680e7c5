"""Pruning: magnitude, random, Wanda and SparseGPT, and the N:M structured option they share.

N:M convention (the one of this project, everywhere): ``nm_n`` is the number of weights **kept**
(non-zero) in every group of ``nm_m`` consecutive input weights of a row, so 2:4 keeps 2 of every 4.
Beware that the Wanda and SparseGPT reference scripts call the *pruned* count ``prune_n``; for 2:4 and
4:8 both readings coincide, for 1:4 they do not. ``nm_n = nm_m = 0`` means unstructured.
"""
from __future__ import annotations

from typing import Any

import torch

from lcc import ConfigError
from lcc.compressors.base import (Compressor, check_fraction, check_int, register, target_linears)
from lcc.compressors.engine import (HessianStats, NormStats, inverse_hessian_upper, prepare_hessian,
                                    run_sequential)

NM_PARAMS = {"nm_n": 0, "nm_m": 0}
#: ``sparsity`` given together with N:M must equal 1 - nm_n/nm_m to this tolerance (so that the 6 significant
#: digits an error message prints are accepted); it is then set to exactly 1 - nm_n/nm_m.
NM_SPARSITY_TOL = 1e-6


# ---- N:M helpers ---------------------------------------------------------------------------------
def check_nm(kw: dict[str, Any]) -> None:
    """Validate ``nm_n``/``nm_m`` and their consistency with ``sparsity`` (user values only)."""
    check_int(kw, "nm_n", 0, 1 << 16)
    check_int(kw, "nm_m", 0, 1 << 16)
    n, m = kw.get("nm_n", 0), kw.get("nm_m", 0)
    if (n == 0) != (m == 0):
        raise ConfigError(f"nm_n={n!r}, nm_m={m!r} is invalid; valid: both 0 (unstructured) or "
                          f"0 < nm_n < nm_m (keep nm_n of every nm_m consecutive input weights)")
    if m and not n < m:
        raise ConfigError(f"nm_n={n!r} must be smaller than nm_m={m!r} (nm_n = weights kept per group of nm_m)")
    s = kw.get("sparsity")
    if m and s is not None and abs(float(s) - (1 - n / m)) > NM_SPARSITY_TOL:
        raise ConfigError(f"sparsity={s!r} contradicts N:M {n}:{m}, which prunes {1 - n / m:.6g} of the weights; "
                          f"valid: sparsity={1 - n / m:.6g} or sparsity=null (then taken from N:M)")
    if not m and "sparsity" in kw and s is None:
        raise ConfigError("sparsity=None is invalid without N:M; valid: a number in [0, 1), or null together "
                          "with nm_n/nm_m > 0")


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


def nm_level(n: int, m: int, sparsity: float) -> str:
    return f"{n}:{m}" if m else f"sparsity={sparsity}"


def prune_smallest(weight: torch.Tensor, score: torch.Tensor, sparsity: float) -> int:
    """Zero exactly round(sparsity * numel) entries of ``weight`` with the lowest ``score``."""
    k = int(round(sparsity * weight.numel()))
    if k:
        idx = torch.topk(score.flatten(), k, largest=False, sorted=False).indices
        weight.view(-1)[idx] = 0
    return k


def _sparsity_facts(lins: dict[str, torch.nn.Linear]) -> dict[str, Any]:
    zeros = sum(int((lin.weight == 0).sum()) for lin in lins.values())
    total = sum(lin.weight.numel() for lin in lins.values())
    return {"sparsity_achieved": zeros / max(total, 1), "n_linears": len(lins)}


class NMPruner(Compressor):
    """Base of the pruners that take ``sparsity`` or N:M structure (magnitude, wanda, sparsegpt)."""

    params = {"sparsity": 0.5, **NM_PARAMS}

    @classmethod
    def check(cls, kw):
        if kw.get("sparsity") is not None:
            check_fraction(kw, "sparsity")
        check_nm(kw)

    def __init__(self, targets=None, **kw):
        super().__init__(targets, **kw)
        if self.nm_m:
            self.sparsity = 1 - self.nm_n / self.nm_m

    def level(self) -> str:
        return nm_level(self.nm_n, self.nm_m, self.sparsity)

    def nm_linears(self, model) -> dict[str, torch.nn.Linear]:
        """The targeted Linears, after checking that nm_m divides every one's input width."""
        lins = target_linears(model, self.targets)
        for name, lin in lins.items():
            check_nm_width(lin.in_features, self.nm_m, name)
        return lins


# ---- magnitude -----------------------------------------------------------------------------------
@register
class Magnitude(NMPruner):
    """Magnitude pruning with a per-layer threshold: in every targeted Linear the ``sparsity`` fraction
    of weights with the smallest |w| is set to zero. With ``nm_n``/``nm_m`` > 0: N:M structured, keep the
    ``nm_n`` largest |w| of every ``nm_m`` consecutive input weights of each row (sparsity = 1 - N/M)."""

    name = "magnitude"
    cacheable = True
    zeroes_only = True

    @torch.no_grad()
    def compress(self, model, calib=None):
        pruned = total = 0
        lins = self.nm_linears(model)
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
@register
class RandomPrune(Compressor):
    """Zero exactly round(sparsity · numel) uniformly random weights of every targeted Linear (seeded).
    The floor every informed pruning method must beat."""

    name = "random"
    cacheable = True
    zeroes_only = True
    params = {"sparsity": 0.5, "seed": 0}

    @classmethod
    def check(cls, kw):
        check_fraction(kw, "sparsity")
        check_int(kw, "seed", 0, 2 ** 63 - 1)

    def level(self) -> str:
        return f"sparsity={self.sparsity}"

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


class _WandaMethod(NormStats):
    def __init__(self, sparsity, n_keep, m):
        super().__init__()
        self.sparsity, self.n_keep, self.m = sparsity, n_keep, m

    def compress_layer(self, name, linear):
        norms = self.pop_norms(name)
        check_nm_width(linear.in_features, self.m, name)
        wanda_prune_(linear.weight.data, norms, self.sparsity, self.n_keep, self.m)
        return {}


@register
class Wanda(NMPruner):
    """Wanda (Sun et al. 2023, locuslab/wanda): prune by |W|·‖X‖ without weight update."""

    name = "wanda"
    cacheable = True
    zeroes_only = True
    params = {**NMPruner.params, "propagate": True}
    calibrated = True

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = self.nm_linears(model)
        run_sequential(model, calib, self.targets, _WandaMethod(self.sparsity, self.nm_n, self.nm_m),
                       propagate=bool(self.propagate), desc="wanda")
        return _sparsity_facts(lins)


# ---- SparseGPT -----------------------------------------------------------------------------------
def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float, n_keep: int = 0, m: int = 0,
                    blocksize: int = 128, percdamp: float = 0.01, name: str = "") -> tuple[torch.Tensor, int]:
    """SparseGPT (Frantar & Alistarh 2023) on fp32 copies: OBS reconstruction column by column with the
    upper Cholesky factor of H⁻¹; in blocks of ``blocksize`` columns, the unstructured mask of a block is
    chosen adaptively from w²/[H⁻¹]_jj² over the whole block (as the reference); N:M picks the
    ``m - n_keep`` lowest of every ``m`` columns when the walk reaches them. Returns (Ŵ, Cholesky retries)."""
    W = W.clone().float()
    H = H.clone().float()
    rows, cols = W.shape
    prepare_hessian(W, H)
    Hinv, retries, _ = inverse_hessian_upper(H, percdamp, name)
    prune_k = m - n_keep if m else 0
    bs = max(m, (blocksize // m) * m) if m else blocksize
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        dg = torch.diag(Hinv1)
        if m:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            # adaptive mask of the block; exactly int(numel·sparsity) entries (the reference's
            # `tmp <= sorted[k]` takes one more, plus ties)
            tmp = W1 ** 2 / dg.reshape(1, -1) ** 2
            k = int(tmp.numel() * sparsity)
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            if k:
                mask1.view(-1)[torch.topk(tmp.flatten(), k, largest=False).indices] = True
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if m and i % m == 0:
                tmp = W1[:, i:i + m] ** 2 / dg[i:i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prune_k, dim=1, largest=False).indices, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, retries


class _SparseGPTMethod(HessianStats):
    def __init__(self, sparsity, n_keep, m, blocksize, percdamp):
        super().__init__()
        self.sparsity, self.n_keep, self.m, self.blocksize, self.percdamp = sparsity, n_keep, m, blocksize, percdamp
        self.retries = 0

    def compress_layer(self, name, linear):
        H = self.pop_hessian(name)
        w = linear.weight.data
        check_nm_width(w.shape[1], self.m, name)
        new, r = sparsegpt_prune(w.to(H.device), H, self.sparsity, self.n_keep, self.m, self.blocksize,
                                 self.percdamp, name)
        self.retries += r
        w.copy_(new.to(w.dtype))
        return {"cholesky_retries": r}


@register
class SparseGPT(NMPruner):
    """SparseGPT (IST-DASLab/sparsegpt): one-shot pruning with OBS weight reconstruction."""

    name = "sparsegpt"
    cacheable = True
    params = {**NMPruner.params, "blocksize": 128, "percdamp": 0.01, "propagate": True}
    calibrated = True

    @classmethod
    def check(cls, kw):
        super().check(kw)
        check_int(kw, "blocksize", 1, 1 << 16)
        check_fraction(kw, "percdamp", lo_closed=True, hi_closed=True)

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = self.nm_linears(model)
        method = _SparseGPTMethod(self.sparsity, self.nm_n, self.nm_m, self.blocksize, self.percdamp)
        run_sequential(model, calib, self.targets, method, propagate=bool(self.propagate), desc="sparsegpt")
        return {**_sparsity_facts(lins), "cholesky_retries": method.retries}
