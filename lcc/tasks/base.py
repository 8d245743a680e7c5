"""The task contract, its name registry, and the one table of task metrics.

A task is a small dataclass: its fields are its parameters (with their defaults), ``check()`` range-checks
them (a ``ConfigError`` naming the value and the valid choices), and ``kind`` says how a job runs it:

* ``kl``: the per-position KL on text (``lcc.job``'s own path, unchanged);
* ``synthetic``: seeded prompts that fill the context exactly (``samples()``), scored on the dense and the
  compressed model by ``lcc.tasks.score`` (greedy decoding with a KV cache, teacher-forced answer NLL, KL at
  the answer positions);
* ``lm_eval``: an lm-evaluation-harness task run on the in-memory model (``lcc.tasks.lm_eval``).

Every module of ``lcc/tasks/`` that defines a task registers it with ``@register``; ``lcc.tasks`` imports
them all (module discovery), so adding a task is adding one module plus ``lcc/conf/task/<name>.yaml``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lcc import ConfigError

REGISTRY: dict[str, type["Task"]] = {}


def register(cls: type["Task"]) -> type["Task"]:
    REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type["Task"]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown task {name!r}; valid choices: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


@dataclass
class Task:
    """Base class: subclasses are dataclasses whose fields are the task's parameters."""

    name: ClassVar[str]
    kind: ClassVar[str]

    @classmethod
    def param_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_config(cls, params: dict[str, Any]) -> "Task":
        unknown = set(params) - set(cls.param_names())
        if unknown:
            raise ConfigError(f"task {cls.name!r} does not take {sorted(unknown)}; "
                              f"its parameters are: {cls.param_names() or 'none'}")
        task = cls(**params)
        task.check()
        return task

    def check(self) -> None:
        """Range checks; raise ConfigError naming the value and the valid choices."""

    def check_job(self, cfg: Any) -> None:
        """Checks of the rest of a job's config that this task needs (no model loaded)."""

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- parameter checks (messages name the value and what is valid) ------------------------------
def check_int(obj: Any, key: str, lo: int, hi: int | None = None) -> None:
    v = getattr(obj, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"task.{key}={v!r} is invalid; valid: an integer {rng}")


def check_bool(obj: Any, key: str) -> None:
    v = getattr(obj, key)
    if not isinstance(v, bool):
        raise ConfigError(f"task.{key}={v!r} is invalid; valid: true or false")


def check_choice(obj: Any, key: str, choices: list) -> None:
    """``choices`` may mix strings and booleans; 1/0 are not booleans."""
    v = getattr(obj, key)
    if not any(v is c if isinstance(c, bool) else (not isinstance(v, bool) and v == c) for c in choices):
        raise ConfigError(f"task.{key}={v!r} is invalid; valid choices: {choices}")


# ---- the one table of task metrics -------------------------------------------------------------
@dataclass(frozen=True)
class TaskMetric:
    """One number a task job reports. ``key`` is the per-prompt column of ``samples.parquet`` and the key of
    ``summary`` (with ``<key>_se``); ``agg`` how prompts are aggregated: ``binomial`` (a 0/1 outcome: the
    proportion, SE sqrt(p(1-p)/n)) or ``mean`` (mean over prompts, SE = sample std / sqrt(n): the prompt is
    the unit, as the document is for KL); ``shown``: where it appears (``table``: reduce's task tables,
    ``heatmap``: reduce's depth x ctx figures, ``wandb``: the run summary, ``log``: the job's last line)."""

    key: str
    agg: str
    label: str
    shown: tuple[str, ...]


#: Synthetic long-context tasks (passkey, niah, vt). "answer positions" are the teacher-forced positions of
#: the reference answer's tokens.
TASK_METRICS: tuple[TaskMetric, ...] = (
    TaskMetric("acc_dense", "binomial", "accuracy, dense", ("table", "heatmap", "wandb", "log")),
    TaskMetric("acc_compressed", "binomial", "accuracy, compressed", ("table", "heatmap", "wandb", "log")),
    TaskMetric("acc_delta", "mean", "accuracy compressed - dense (paired)", ("table", "wandb")),
    TaskMetric("nll_dense", "mean", "answer NLL, dense (nats/token)", ("table", "wandb")),
    TaskMetric("nll_compressed", "mean", "answer NLL, compressed (nats/token)", ("table", "wandb")),
    TaskMetric("kl_answer", "mean", "KL(P_dense || Q) at answer positions (nats/token)", ("table", "wandb", "log")),
    TaskMetric("top1_answer", "mean", "top-1 agreement at answer positions", ("wandb",)),
)

#: lm-evaluation-harness tasks: one row per (task, metric) of lm-eval's results.
LM_EVAL_METRICS: tuple[TaskMetric, ...] = (
    TaskMetric("score_dense", "lm_eval", "lm-eval score, dense (lm-eval's stderr)", ("table", "wandb", "log")),
    TaskMetric("score_compressed", "lm_eval", "lm-eval score, compressed", ("table", "wandb", "log")),
    TaskMetric("score_delta", "lm_eval", "compressed - dense", ("table", "wandb")),
    TaskMetric("matching", "lm_eval", "LLM-KICK 'matching': |compressed - dense| <= match_within x |dense|",
               ("table", "wandb", "log")),
)


def metrics_shown(where: str, table: tuple[TaskMetric, ...] = TASK_METRICS) -> list[TaskMetric]:
    return [m for m in table if where in m.shown]


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def aggregate(values: np.ndarray, agg: str) -> tuple[float | None, float | None]:
    """Mean and standard error of per-prompt values under the metric's aggregation (None: undefined)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return None, None
    m = x.mean()
    if agg == "binomial":
        return _num(m), _num(math.sqrt(m * (1 - m) / n))
    if agg == "mean":
        return _num(m), (_num(x.std(ddof=1) / math.sqrt(n)) if n > 1 else None)
    raise ValueError(f"unknown aggregation {agg!r}")


def summarize(rows, by: str = "depth") -> tuple[dict, list[dict]]:
    """Overall summary and one dict per ``by`` value (depth) from the per-prompt rows (a DataFrame)."""
    summary: dict[str, Any] = {"n_prompts": int(len(rows))}
    for m in TASK_METRICS:
        summary[m.key], summary[f"{m.key}_se"] = aggregate(rows[m.key].to_numpy(), m.agg)
    groups = []
    for value, g in rows.groupby(by, sort=True):
        d: dict[str, Any] = {by: float(value), "n_prompts": int(len(g))}
        for m in TASK_METRICS:
            d[m.key], d[f"{m.key}_se"] = aggregate(g[m.key].to_numpy(), m.agg)
        groups.append(d)
    return summary, groups
