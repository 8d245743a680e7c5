"""Per-job summaries of per-token (and per-prompt) series: every metric of the registry
(``lcc.metrics.registry``) whose series a job measured. Inputs are arrays [n_docs, T] (``lcc.metrics.bins``);
the document is the unit of uncertainty: standard errors are across documents. Definitions: docs/metrics.md."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from lcc.metrics.bins import mean_se
from lcc.metrics import registry  # read at call time: the one list of metrics (tests extend it)


def summarize(arrays: Mapping[str, np.ndarray]) -> tuple[dict, list[dict]]:
    """Scalar summary and the binned curve (one dict per bin) of one job, from its per-token (and per-prompt)
    series (``kl``, ``nll_p``, ``nll_q``, ``agree``...): every metric of ``lcc.metrics.registry.METRICS``
    whose series is present."""
    data = _with_derived(arrays)
    per_token = [s.name for s in registry.SERIES if s.per == "token" and s.name in data]
    ctx = registry.Context(data[per_token[0]].shape[1]) if per_token else None
    summary = _aggregate([m for m in registry.METRICS if m.family != "lm_eval"], data, ctx)
    curve: list[dict] = []
    if ctx is not None:
        x = ctx.x
        cols: dict[str, np.ndarray] = {}
        for m in registry.METRICS:
            if m.curve and m.family == "kl" and m.series in data:
                mean, se = mean_se(ctx.bin_means(data[m.series]))
                cols[m.name] = mean
                if m.se and m.curve_se:
                    cols[m.se] = se
        curve = [{"bin_lo": lo, "bin_hi": hi, "log2_pos": registry.finite(x[b]),
                  **{k: registry.finite(c[b]) for k, c in cols.items()}}
                 for b, (lo, hi) in enumerate(ctx.bins)]
    return summary, curve


def _with_derived(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays as float64, plus every registered series derived from them."""
    data = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    for s in registry.SERIES:
        if s.derive is not None and s.name not in data:
            try:
                data[s.name] = s.derive(data)
            except KeyError:  # a series it derives from is absent
                pass
    return data


def _aggregate(metrics, data: Mapping[str, np.ndarray], ctx) -> dict:
    """Every metric whose series is present: its value (and SE), NaN as None."""
    summary: dict = {}
    for m in metrics:
        if m.series not in data:
            continue
        v, se = m.agg(data[m.series], ctx)
        summary[m.name] = v if m.exact else registry.finite(v)
        if m.se:
            summary[m.se] = registry.finite(se)
    return summary


def prompt_summary(rows: pd.DataFrame, family: str = "synthetic", by: str = "depth") -> tuple[dict, list[dict]]:
    """A task job's summary over all its prompts and one dict per ``by`` value (needle depth), from its
    per-prompt rows (the columns of samples.parquet): every metric of the registry of this ``family``."""
    ms = registry.metrics(family)

    def agg(frame) -> dict:
        return _aggregate(ms, _with_derived({c: frame[c].to_numpy() for c in frame.columns
                                             if frame[c].dtype.kind in "biuf"}), None)
    groups = [{by: float(value), **agg(g)} for value, g in rows.groupby(by, sort=True)]
    return agg(rows), groups


def position_table(arrays: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """curve.parquet: per position (1-based) the mean across documents of every per-token series that has a
    ``position_column``."""
    cols = {s.position_column: np.asarray(arrays[s.name]).mean(0) for s in registry.SERIES
            if s.position_column and s.name in arrays}
    n = len(next(iter(cols.values())))
    return pd.DataFrame({"position": np.arange(1, n + 1), **cols})
