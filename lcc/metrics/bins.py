"""Position bins and per-document statistics: the octave bins of a window's positions, bin means, mean and
standard error across documents, the slope per doubling of the context. Inputs are arrays [n_docs, T] where
column t is the prediction made after seeing t+1 tokens ("position" p = t + 1, 1-based); the document is the
unit of uncertainty. Definitions: docs/metrics.md."""
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
