"""Weights & Biases logging of a finished job (offline unless configured). Local files are written
before this runs, and any W&B failure is logged as a warning: it never loses a result."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_id(out: Path, config_hash: str) -> str:
    """Stable per (job folder, config): a requeued or resumed job continues the same W&B run."""
    return hashlib.sha1(f"{out.resolve()}|{config_hash}".encode()).hexdigest()[:16]


def log_result(cfg: DictConfig, result: dict, out: Path) -> None:
    lg = cfg.logger
    if lg.kind == "none":
        return
    if lg.kind != "wandb":
        log.warning("logger.kind=%r is unknown (valid: wandb, none); nothing logged", lg.kind)
        return
    try:
        import wandb

        group = lg.group or out.parent.name
        name = out.name
        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(project=lg.project, entity=lg.entity, group=group, name=name, dir=str(out),
                         mode=lg.mode, id=run_id(out, result["config_hash"]), resume="allow",
                         config=flatten(result["config"]), tags=list(lg.tags or []),
                         settings=wandb.Settings(console="off", x_disable_stats=True))
        run.summary.update({**result["summary"], **{f"time/{k}": v for k, v in result["timings"].items()},
                            "level": result["level"], "compressor": result["compressor"], "ctx": result["ctx"],
                            "task": result.get("task", "kl")})
        if result.get("curve"):  # task=kl: the binned KL curve
            cols = list(result["curve"][0].keys())
            table = wandb.Table(columns=cols, data=[[row[c] for c in cols] for row in result["curve"]])
            run.log({"kl_curve": table,
                     "kl_vs_position": wandb.plot.line(table, "log2_pos", "kl_mean",
                                                       title=f"KL vs log2(position): {name}")})
        for key, rows in (("by_depth", result.get("by_depth")), ("lm_eval", result.get("lm_eval"))):
            if rows:  # other tasks: per-depth accuracy / lm-eval scores (lcc.tasks.base metric tables)
                cols = list(rows[0].keys())
                run.log({f"task/{key}": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
        run.finish()
    except Exception as e:  # noqa: BLE001 - logging must never lose a finished job
        log.warning("W&B logging failed (%s: %s); local results in %s are complete", type(e).__name__, e, out)
