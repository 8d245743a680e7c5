"""Per-job summaries of per-token metrics. All inputs are arrays [n_docs, T] where column t is the
prediction made after seeing t+1 tokens ("position" p = t + 1, 1-based). The document is the unit of
uncertainty: standard errors are across documents. Definitions: docs/metrics.md."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

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


def summarize(arrays: Mapping[str, np.ndarray]) -> tuple[dict, list[dict]]:
    """Scalar summary and the binned curve (one dict per bin) of one job, from its per-token (and per-prompt)
    series (``kl``, ``nll_p``, ``nll_q``, ``agree``...): every metric of ``lcc.metrics.registry.METRICS``
    whose series is present."""
    from lcc.metrics.registry import METRICS, Context, finite

    data = _with_derived(arrays)
    per_token = [s.name for s in _series() if s.per == "token" and s.name in data]
    ctx = Context(data[per_token[0]].shape[1]) if per_token else None
    summary = _aggregate([m for m in METRICS if m.kind != "lm_eval"], data, ctx)
    curve: list[dict] = []
    if ctx is not None:
        x = ctx.x
        cols: dict[str, np.ndarray] = {}
        for m in METRICS:
            if m.curve and m.kind == "kl" and m.series in data:
                mean, se = mean_se(ctx.bin_means(data[m.series]))
                cols[m.name] = mean
                if m.se and m.curve_se:
                    cols[m.se] = se
        curve = [{"bin_lo": lo, "bin_hi": hi, "log2_pos": finite(x[b]), **{k: finite(c[b]) for k, c in cols.items()}}
                 for b, (lo, hi) in enumerate(ctx.bins)]
    return summary, curve


def _series():
    from lcc.metrics.registry import SERIES
    return SERIES


def _with_derived(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays as float64, plus every registered series derived from them."""
    data = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    for s in _series():
        if s.derive is not None and s.name not in data:
            try:
                data[s.name] = s.derive(data)
            except KeyError:  # a series it derives from is absent
                pass
    return data


def _aggregate(metrics, data: Mapping[str, np.ndarray], ctx) -> dict:
    """Every metric whose series is present: its value (and SE), NaN as None."""
    from lcc.metrics.registry import finite

    summary: dict = {}
    for m in metrics:
        if m.series not in data:
            continue
        v, se = m.agg(data[m.series], ctx)
        summary[m.name] = v if m.exact else finite(v)
        if m.se:
            summary[m.se] = finite(se)
    return summary


def prompt_summary(rows: "pd.DataFrame", kind: str = "synthetic", by: str = "depth") -> tuple[dict, list[dict]]:
    """A task job's summary over all its prompts and one dict per ``by`` value (needle depth), from its
    per-prompt rows (the columns of samples.parquet): every metric of the registry of this ``kind``."""
    from lcc.metrics.registry import metrics

    ms = metrics(kind)

    def agg(frame) -> dict:
        return _aggregate(ms, _with_derived({c: frame[c].to_numpy() for c in frame.columns
                                             if frame[c].dtype.kind in "biuf"}), None)
    groups = [{by: float(value), **agg(g)} for value, g in rows.groupby(by, sort=True)]
    return agg(rows), groups


def position_table(arrays: Mapping[str, np.ndarray]) -> "pd.DataFrame":
    """curve.parquet: per position (1-based) the mean across documents of every per-token series that has a
    ``position_column``."""
    import pandas as pd

    from lcc.metrics.registry import SERIES

    cols = {s.position_column: np.asarray(arrays[s.name]).mean(0) for s in SERIES
            if s.position_column and s.name in arrays}
    n = len(next(iter(cols.values())))
    return pd.DataFrame({"position": np.arange(1, n + 1), **cols})
