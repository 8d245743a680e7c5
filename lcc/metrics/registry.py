"""The one list of metrics: each named once, with where it comes from and where it goes.

* :data:`SERIES`: the measured quantities. ``per="token"``: an array [n_docs, positions] (the tensors of
  ``tokens.safetensors``, plus derived ones such as ``delta_nll``); each may name its column in
  ``curve.parquet`` (the per-position mean over documents). ``per="prompt"``: an array [n_prompts] of a task
  (e.g. 1/0 for a correct answer), a unit of uncertainty of its own.
* :data:`METRICS`: the numbers of a job's ``summary``: the series it reads, its aggregation, its label, and
  its standard error's key (if any), goes in reduce's tables, in the binned ``curve``, in
  W&B, and in the job's log line. ``family`` says which jobs report it: ``kl`` (the per-token KL task),
  ``synthetic`` (passkey, niah, vt: per-prompt series, the columns of ``samples.parquet``, aggregated over
  prompts and per needle depth) or ``lm_eval`` (numbers lm-eval itself reports).

``summarize`` / ``prompt_summary`` (lcc.metrics.summary), the curve table of a job, lcc.reduce (and its task
tables and heatmaps), the logger and the log line read these lists; a new metric is one entry here (and, if it
is a new quantity, one ``Series``). Definitions: docs/metrics.md, docs/tasks.md.

A task's accuracy is a per-prompt series plus its metric::

    Series("acc_dense", "1 if the dense greedy output holds every expected string", per="prompt")
    Metric("acc_dense", "acc_dense", binomial, "accuracy, dense", se="acc_dense_se", table=True,
           heatmap="dense", log="acc_dense {v:.3g} ± {se:.2g}", family="synthetic")

``prompt_summary`` aggregates it across prompts (the prompt is its unit of uncertainty, as the document is
for KL).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from lcc.metrics.bins import LATE_FROM, bin_log2_centers, bin_means, mean_se, octave_bins, slope_vs_log2


# ---- the measured quantities ----------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    name: str
    label: str
    per: str = "token"  # token: [n_docs, positions]; prompt: [n_prompts]
    position_column: str | None = None  # its per-position mean's column in curve.parquet
    derive: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None  # from other series


SERIES: list[Series] = [
    Series("kl", "KL(P_dense || Q) [nats]", position_column="kl_mean"),
    Series("nll_p", "NLL of the dense model", position_column="nll_dense"),
    Series("nll_q", "NLL of the compressed model", position_column="nll_compressed"),
    Series("agree", "top-1 agreement", position_column="top1_agree"),
    Series("delta_nll", "NLL_q - NLL_p", derive=lambda a: a["nll_q"] - a["nll_p"]),
    # synthetic tasks (passkey, niah, vt): one value per prompt, a column of samples.parquet
    Series("acc_dense", "1 if the dense model's greedy output holds every expected string, else 0", per="prompt"),
    Series("acc_compressed", "1 if the compressed model's greedy output holds every expected string", per="prompt"),
    Series("acc_delta", "acc_compressed - acc_dense on the same prompt", per="prompt"),
    Series("nll_dense", "mean NLL of the reference answer's tokens, dense, teacher-forced", per="prompt"),
    Series("nll_compressed", "mean NLL of the reference answer's tokens, compressed", per="prompt"),
    Series("kl_answer", "mean KL(P_dense || Q) over the answer positions", per="prompt"),
    Series("top1_answer", "share of answer positions where both models' argmax agree", per="prompt"),
]


# ---- aggregations ---------------------------------------------------------------------------------
class Context:
    """What aggregations of one job's per-token series share: the octave bins and their centres."""

    def __init__(self, n_positions: int):
        self.bins = octave_bins(n_positions)
        self.x = bin_log2_centers(self.bins)

    def bin_means(self, values: np.ndarray) -> np.ndarray:
        """[D, T] -> [D, bins]: each document's mean over each bin's positions."""
        return bin_means(values, self.bins)


#: ``agg(values, ctx) -> (value, standard error or None)``
Aggregation = Callable[[np.ndarray, Context], tuple[Any, Any]]


def mean_over_units(values: np.ndarray, ctx: Context) -> tuple[Any, Any]:
    """Per unit (document: mean over its positions; prompt: its value), then mean ± SE across units."""
    return mean_se(values.mean(axis=1) if values.ndim == 2 else values)


def _finite(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def prompt_mean(values: np.ndarray, ctx: Context | None) -> tuple[Any, Any]:
    """A per-prompt quantity (undefined prompts, NaN, left out): mean ± SE across prompts."""
    x = _finite(values)
    return mean_se(x) if len(x) else (float("nan"), float("nan"))


def binomial(values: np.ndarray, ctx: Context | None) -> tuple[Any, Any]:
    """A per-prompt 0/1 outcome (accuracy): the proportion p ± sqrt(p(1-p)/n)."""
    x = _finite(values)
    if not len(x):
        return float("nan"), float("nan")
    p = x.mean()
    return p, math.sqrt(p * (1 - p) / len(x))


def pooled(fn: Callable[[np.ndarray], Any]) -> Aggregation:
    """``fn`` of every value pooled (all documents' positions together); no standard error."""
    return lambda values, ctx: (fn(values.ravel()), None)


def slope(late_from: int | None = None) -> Aggregation:
    """Per document, the least-squares slope of the bin means against log2(position) (per doubling of the
    context), over every bin or the bins starting at ``late_from`` or later; then mean ± SE across documents."""
    def agg(values: np.ndarray, ctx: Context) -> tuple[Any, Any]:
        vb = ctx.bin_means(values)
        if late_from is None:
            return mean_se(slope_vs_log2(vb, ctx.x))
        late = np.array([lo >= late_from for lo, _ in ctx.bins])
        return mean_se(slope_vs_log2(vb[:, late], ctx.x[late]))
    return agg


def perplexity(values: np.ndarray, ctx: Context) -> tuple[Any, Any]:
    """exp of the pooled mean NLL."""
    return np.exp(values.mean()), None


def count(axis: int) -> Aggregation:
    return lambda values, ctx: (int(values.shape[axis]), None)


def reported(values: np.ndarray, ctx: Context | None) -> tuple[Any, Any]:
    """A number another library computes (lm-eval's scores and standard errors); lcc does not aggregate it."""
    raise TypeError("this metric is reported by lm-eval, not aggregated by lcc")


# ---- the metrics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    name: str  # the summary key
    series: str  # the Series it reads
    agg: Aggregation
    label: str
    se: str | None = None  # the summary key of its standard error, if it has one
    table: bool = False  # a sensitivity table of reduce (value ± SE per ctx)
    curve: bool = False  # a column of the binned curve: per bin, the mean across documents
    curve_se: bool = True  # ... and its SE (under the key ``se``)
    wandb: bool = True  # in the W&B run summary
    log: str | None = None  # its part of the job's log line: format with {v} (and {se})
    exact: bool = False  # an integer count, not a float statistic
    slug: str | None = None  # file- and W&B-key-safe name of its table (default: ``name``)
    family: str = "kl"  # the jobs that report it: kl | synthetic | lm_eval (a task's ``family``, lcc.tasks.base)
    heatmap: str | None = None  # synthetic tasks: the depth x ctx panel it fills (dense | compressed)

    @property
    def table_slug(self) -> str:
        return self.slug or self.name


#: the order of a job's summary, of sensitivity.csv's columns and of reduce's tables
METRICS: list[Metric] = [
    Metric("kl_mean", "kl", mean_over_units, "mean KL (nats/token)", se="kl_se", table=True, curve=True,
           log="KL {v:.4g} ± {se:.2g}", slug="mean_kl"),
    Metric("kl_slope", "kl", slope(), "KL slope per doubling of position", se="kl_slope_se", table=True,
           log="slope {v:.3g}"),
    Metric("kl_slope_late", "kl", slope(late_from=LATE_FROM), f"KL slope per doubling, positions >= {LATE_FROM} only",
           se="kl_slope_late_se", table=True),
    Metric("kl_median", "kl", pooled(np.median), "median token KL"),
    Metric("kl_p90", "kl", pooled(lambda v: np.quantile(v, 0.90)), "90th percentile of token KL"),
    Metric("kl_p99", "kl", pooled(lambda v: np.quantile(v, 0.99)), "99th percentile of token KL"),
    Metric("kl_max", "kl", pooled(np.max), "maximum token KL"),
    Metric("top1_agree", "agree", mean_over_units, "top-1 agreement", se="top1_agree_se", table=True, curve=True,
           curve_se=False, log="top1 {v:.3f}"),
    Metric("delta_nll", "delta_nll", mean_over_units, "ΔNLL = ln(PPL_c / PPL_d)", se="delta_nll_se", table=True,
           curve=True),
    Metric("ppl_dense", "nll_p", perplexity, "perplexity of the dense model"),
    Metric("ppl_compressed", "nll_q", perplexity, "perplexity of the compressed model"),
    Metric("n_docs", "kl", count(0), "documents", exact=True),
    Metric("n_positions", "kl", count(1), "scored positions per document", exact=True),
    # synthetic tasks: over all prompts (summary) and per needle depth (by_depth); docs/tasks.md
    Metric("n_prompts", "acc_dense", count(0), "prompts", exact=True, family="synthetic"),
    Metric("acc_dense", "acc_dense", binomial, "accuracy, dense", se="acc_dense_se", table=True, heatmap="dense",
           log="acc_dense {v:.3g} ± {se:.2g}", family="synthetic"),
    Metric("acc_compressed", "acc_compressed", binomial, "accuracy, compressed", se="acc_compressed_se", table=True,
           heatmap="compressed", log="acc_compressed {v:.3g} ± {se:.2g}", family="synthetic"),
    Metric("acc_delta", "acc_delta", prompt_mean, "accuracy compressed - dense (paired)", se="acc_delta_se",
           table=True, family="synthetic"),
    Metric("nll_dense", "nll_dense", prompt_mean, "answer NLL, dense (nats/token)", se="nll_dense_se", table=True,
           family="synthetic"),
    Metric("nll_compressed", "nll_compressed", prompt_mean, "answer NLL, compressed (nats/token)",
           se="nll_compressed_se", table=True, family="synthetic"),
    Metric("kl_answer", "kl_answer", prompt_mean, "KL(P_dense || Q) at answer positions (nats/token)",
           se="kl_answer_se", table=True, log="kl_answer {v:.3g} ± {se:.2g}", family="synthetic"),
    Metric("top1_answer", "top1_answer", prompt_mean, "top-1 agreement at answer positions", se="top1_answer_se",
           family="synthetic"),
    # lm-evaluation-harness tasks: the first (task, metric) of lm-eval's results (every row: result.json lm_eval)
    Metric("score_dense", "dense", reported, "lm-eval score, dense (lm-eval's stderr)", se="score_dense_se",
           table=True, log="score_dense {v:.3g} ± {se:.2g}", family="lm_eval"),
    Metric("score_compressed", "compressed", reported, "lm-eval score, compressed", se="score_compressed_se",
           table=True, log="score_compressed {v:.3g} ± {se:.2g}", family="lm_eval"),
    Metric("score_delta", "delta", reported, "compressed - dense", table=True, family="lm_eval"),
    Metric("matching", "matching", reported, "LLM-KICK 'matching': |compressed - dense| <= match_within x |dense|",
           table=True, log="matching {v}", family="lm_eval"),
]

def series(name: str) -> Series:
    return next(s for s in SERIES if s.name == name)


def metric(name: str, family: str = "kl") -> Metric:
    return next(m for m in METRICS if m.name == name and m.family == family)


def metrics(family: str = "kl") -> list[Metric]:
    """The metrics that jobs of this family report (kl, synthetic, lm_eval)."""
    return [m for m in METRICS if m.family == family]


def summary_keys(family: str = "kl") -> list[str]:
    """Every key of a job's summary, each metric followed by its SE."""
    return [k for m in metrics(family) for k in (m.name, m.se) if k]


def table_metrics(family: str = "kl") -> list[Metric]:
    return [m for m in metrics(family) if m.table]


def heatmap_metric(panel: str, family: str = "synthetic") -> Metric:
    """The metric of the dense (``panel="dense"``) or compressed panels of the depth x ctx heatmaps."""
    return next(m for m in metrics(family) if m.heatmap == panel)


def curve_keys() -> list[str]:
    """The per-bin keys of a job's binned ``curve`` besides the bin's own (bin_lo, bin_hi, log2_pos)."""
    return [k for m in metrics("kl") if m.curve for k in (m.name, m.se if m.curve_se else None) if k]


def position_columns() -> list[str]:
    """The per-position columns of curve.parquet besides ``position``."""
    return [s.position_column for s in SERIES if s.position_column]


def wandb_keys(family: str = "kl") -> list[str]:
    return [k for m in metrics(family) if m.wandb for k in (m.name, m.se) if k]


def log_line(summary: Mapping[str, Any], family: str = "kl") -> str:
    """The metrics part of a job's 'done' log line (undefined values print as nan)."""
    def num(v):
        return float("nan") if v is None else v
    return "  ".join(m.log.format(v=num(summary.get(m.name)), se=num(summary.get(m.se)))
                     for m in metrics(family) if m.log and m.name in summary)


def family_of(result: Mapping[str, Any]) -> str:
    """The metric family of a job's result.json, as the result declares it (``metrics``, the task's ``family``);
    results written before it did, by their body: ``lm_eval`` rows are lm_eval, ``by_depth`` rows synthetic,
    else (a per-position ``curve``) kl."""
    if "metrics" in result:
        return result["metrics"]
    return "lm_eval" if "lm_eval" in result else "synthetic" if "by_depth" in result else "kl"


def finite(v: Any) -> float | None:
    """A plain float, or None where the statistic is undefined (NaN: one document, too few bins), so the
    returned dict equals the strict JSON written to result.json (which has no NaN)."""
    v = float(v)
    return v if math.isfinite(v) else None
