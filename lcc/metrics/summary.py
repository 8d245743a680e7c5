"""Per-job summaries of per-token metrics. All inputs are arrays [n_docs, T] where column t is the
prediction made after seeing t+1 tokens ("position" p = t + 1, 1-based). The document is the unit of
uncertainty: standard errors are across documents. Definitions: docs/metrics.md."""
from __future__ import annotations

import math

import numpy as np

FIRST_EDGE = 64  # positions below 64 form one bin: [1, 64)
#: ``kl_slope_late`` fits only the bins that start at or after this position: the first few hundred
#: positions of a window often have a high KL of their own, which dominates the all-bins slope.
LATE_FROM = 512


def octave_bins(n_positions: int) -> list[tuple[int, int]]:
    """Half-open position bins [lo, hi) covering positions 1..n_positions:
    [1, 64), [64, 128), [128, 256), ... ; the last bin is cut at n_positions + 1."""
    end = n_positions + 1
    edges = [1]
    e = FIRST_EDGE
    while e < end:
        edges.append(e)
        e *= 2
    edges.append(end)
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def bin_means(values: np.ndarray, bins: list[tuple[int, int]]) -> np.ndarray:
    """Mean of ``values`` [D, T] over each bin's positions -> [D, B]."""
    return np.stack([values[:, lo - 1:hi - 1].mean(axis=1) for lo, hi in bins], axis=1)


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (sample std with ddof=1 over sqrt(n)) along axis 0; SE is NaN for n=1."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    m = x.mean(axis=0)
    se = x.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full_like(m, np.nan)
    return m, se


def bin_log2_centers(bins: list[tuple[int, int]]) -> np.ndarray:
    """x of each bin for the slope: the mean of log2(position) over the bin's positions."""
    return np.array([np.log2(np.arange(lo, hi)).mean() for lo, hi in bins])


def slope_vs_log2(bin_vals: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-document least-squares slope of ``bin_vals`` [D, B] against ``x`` [B] -> [D].
    Units: change of the metric per doubling of the context. NaN with fewer than 2 bins."""
    if bin_vals.shape[1] < 2:
        return np.full(bin_vals.shape[0], np.nan)
    xc = x - x.mean()
    yc = bin_vals - bin_vals.mean(axis=1, keepdims=True)
    return (yc * xc).sum(axis=1) / (xc ** 2).sum()


def _num(v) -> float | None:
    """A plain float, or None where the statistic is undefined (NaN: one document, too few bins), so the
    returned dict equals the strict JSON written to result.json (which has no NaN)."""
    v = float(v)
    return v if math.isfinite(v) else None


def summarize(kl: np.ndarray, nll_p: np.ndarray, nll_q: np.ndarray, agree: np.ndarray) -> tuple[dict, list[dict]]:
    """Scalar summary and the binned curve (one dict per bin) of one job."""
    kl, nll_p, nll_q, agree = (np.asarray(a, dtype=np.float64) for a in (kl, nll_p, nll_q, agree))
    d, t = kl.shape
    bins = octave_bins(t)
    x = bin_log2_centers(bins)
    kl_bins = bin_means(kl, bins)
    dnll_bins = bin_means(nll_q - nll_p, bins)
    agree_bins = bin_means(agree, bins)
    slopes = slope_vs_log2(kl_bins, x)
    late = np.array([lo >= LATE_FROM for lo, _ in bins])
    late_slopes = slope_vs_log2(kl_bins[:, late], x[late])
    kl_mean, kl_se = mean_se(kl.mean(axis=1))
    sl_mean, sl_se = mean_se(slopes)
    late_mean, late_se = mean_se(late_slopes)
    ag_mean, ag_se = mean_se(agree.mean(axis=1))
    dn_mean, dn_se = mean_se((nll_q - nll_p).mean(axis=1))
    flat = kl.ravel()
    summary = {
        "n_docs": d, "n_positions": t,
        "kl_mean": _num(kl_mean), "kl_se": _num(kl_se),
        "kl_median": _num(np.median(flat)), "kl_p90": _num(np.quantile(flat, 0.90)),
        "kl_p99": _num(np.quantile(flat, 0.99)), "kl_max": _num(flat.max()),
        "kl_slope": _num(sl_mean), "kl_slope_se": _num(sl_se),
        "kl_slope_late": _num(late_mean), "kl_slope_late_se": _num(late_se),
        "top1_agree": _num(ag_mean), "top1_agree_se": _num(ag_se),
        "delta_nll": _num(dn_mean), "delta_nll_se": _num(dn_se),
        "ppl_dense": _num(np.exp(nll_p.mean())), "ppl_compressed": _num(np.exp(nll_q.mean())),
    }
    kb_m, kb_se = mean_se(kl_bins)
    db_m, db_se = mean_se(dnll_bins)
    ab_m, _ = mean_se(agree_bins)
    curve = [{"bin_lo": lo, "bin_hi": hi, "log2_pos": _num(xi), "kl_mean": _num(km), "kl_se": _num(ks),
              "delta_nll": _num(dm), "delta_nll_se": _num(ds), "top1_agree": _num(am)}
             for (lo, hi), xi, km, ks, dm, ds, am in zip(bins, x, kb_m, kb_se, db_m, db_se, ab_m)]
    return summary, curve
