"""How lcc's outputs show the metrics: the sensitivity tables, the figures, W&B (history, summary, the reduce
run) and the dashboard read their names from here. The metrics themselves (keys, SEs, labels, where they go)
are named once, in ``lcc.metrics.registry``; the lists below are derived from it. Definitions of the numbers:
docs/metrics.md."""
from __future__ import annotations

from dataclasses import dataclass

from lcc.metrics import registry


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
SUMMARY_COLS = registry.summary_keys()

#: summary numbers in a job's W&B run summary
WANDB_SUMMARY = registry.wandb_keys()


def wandb_summary(result: dict) -> list[str]:
    """The summary keys of a job's W&B run summary for its kind of job (kl, synthetic task, lm_eval)."""
    return registry.wandb_keys(registry.family_of(result))


def _tables(family: str) -> list[Shown]:
    return [Shown(m.name, m.se, m.label + (" ± SE" if m.se else ""), m.table_slug)
            for m in registry.table_metrics(family)]


#: task jobs' tables of reduce (rows model x data x task x compressor x level, columns ctx; cells mean ± SE)
TASK_TABLES = _tables("synthetic")
#: the depth x ctx heatmaps: the dense panel's and the compressed panels' metric
TASK_HEATMAP = {panel: registry.heatmap_metric(panel).name for panel in ("dense", "compressed")}

#: one sensitivity table each (rows model x data x compressor x level, columns ctx; cells mean ± SE)
TABLES = _tables("kl")

#: per-bin numbers of result.json's ``curve`` (octave bins), in the tidy file and the W&B history
BIN_KEYS = ["bin_lo", "bin_hi", "log2_pos", *registry.curve_keys()]
#: per-position means of curve.parquet (column ``position`` is the x)
CURVE_KEYS = registry.position_columns()

#: KL-vs-position figure: the binned curve's mean and SE
_KL, _LATE = registry.metric("kl_mean"), registry.metric("kl_slope_late")
FIG_CURVE = Shown(_KL.name, _KL.se, "KL(P_dense ‖ Q) [nats/token], octave-bin mean ± SE", "kl_vs_position")
#: sensitivity figure: one row of panels each, x = ctx
FIG_SENSITIVITY = [Shown(_KL.name, _KL.se, "mean KL [nats/token]", _KL.table_slug),
                   Shown(_LATE.name, _LATE.se, "late KL slope [nats/doubling]\n(positions ≥ 512)", _LATE.table_slug)]

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
