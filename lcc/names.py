"""The metric names lcc's outputs show, in one table: the sensitivity tables, the figures, W&B (history,
summary, the reduce run) and the dashboard read them from here. Definitions of the numbers:
docs/metrics.md. (When a metric registry exists, these entries are the ones to point at it.)"""
from __future__ import annotations

from dataclasses import dataclass


def ctx_label(tokens: int) -> str:
    """How a context length is written in tables, figures, tags and the dashboard: 1k = 1024 tokens."""
    tokens = int(tokens)
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


@dataclass(frozen=True)
class Shown:
    key: str            # the mean's key (result.json summary / curve bin)
    se: str | None      # its standard error's key, None when there is none
    label: str          # table title / axis label
    slug: str           # file- and W&B-key-safe name


#: summary numbers of a job, copied into sensitivity.csv, the W&B summary and the reduce run's table
SUMMARY_COLS = ["kl_mean", "kl_se", "kl_slope", "kl_slope_se", "kl_slope_late", "kl_slope_late_se", "kl_median",
                "kl_p90", "kl_p99", "kl_max", "top1_agree", "top1_agree_se", "delta_nll", "delta_nll_se",
                "ppl_dense", "ppl_compressed", "n_docs", "n_positions"]

#: one sensitivity table each (rows model x data x compressor x level, columns ctx; cells mean ± SE)
TABLES = [
    Shown("kl_mean", "kl_se", "mean KL (nats/token) ± SE", "mean_kl"),
    Shown("kl_slope", "kl_slope_se", "KL slope per doubling of position ± SE", "kl_slope"),
    Shown("kl_slope_late", "kl_slope_late_se", "KL slope per doubling, positions >= 512 only ± SE",
          "kl_slope_late"),
    Shown("top1_agree", "top1_agree_se", "top-1 agreement", "top1_agree"),
    Shown("delta_nll", "delta_nll_se", "ΔNLL = ln(PPL_c / PPL_d) ± SE", "delta_nll"),
]

#: per-bin numbers of result.json's ``curve`` (octave bins), in the tidy file and the W&B history
BIN_KEYS = ["bin_lo", "bin_hi", "log2_pos", "kl_mean", "kl_se", "delta_nll", "delta_nll_se", "top1_agree"]
#: per-position means of curve.parquet (column ``position`` is the x)
CURVE_KEYS = ["kl_mean", "nll_dense", "nll_compressed", "top1_agree"]

#: KL-vs-position figure: the binned curve's mean and SE
FIG_CURVE = Shown("kl_mean", "kl_se", "KL(P_dense ‖ Q) [nats/token], octave-bin mean ± SE", "kl_vs_position")
#: sensitivity figure: one row of panels each, x = ctx
FIG_SENSITIVITY = [Shown("kl_mean", "kl_se", "mean KL [nats/token]", "mean_kl"),
                   Shown("kl_slope_late", "kl_slope_late_se", "late KL slope [nats/doubling]\n(positions ≥ 512)",
                         "kl_slope_late")]

# W&B history of a job: two series, each row also carrying both x-axes (define_metric step metrics)
WANDB_X = "position"              # token position (bins: 2^log2_pos, the bin's geometric centre)
WANDB_X_LOG2 = "log2_position"    # log2 of it
WANDB_BIN = "bin/"                # octave-bin means and SE: bin/kl_mean, bin/kl_se, bin/kl_lo, bin/kl_hi, ...
WANDB_CURVE = "curve/"            # per-position means, log-spaced downsampled: curve/kl_mean, ...
WANDB_CURVE_POINTS = 256          # at most this many log-spaced points of the per-position curve
#: derived keys of a job's W&B config (beside its resolved config, nested: compressor.name, model.name...),
#: so that runs group and colour by them
WANDB_LEVEL = "level"
WANDB_CTX = "ctx_tokens"
