"""Weights & Biases logging (offline unless ``logger.mode=online``). Local files are written before any of
this runs, and a W&B failure is one warning: it never loses a result.

Per job (``log_result``, job_type ``job``, in the sweep's group): the resolved config plus ``level`` and
``ctx_tokens``; tags model, compressor, level, ctx; the summary numbers; a history with two x-axes
(``position``, ``log2_position``, declared with ``define_metric``) holding the octave-bin means with their SE
(``bin/*``) and the per-position mean curve downsampled to at most 256 log-spaced points (``curve/*``), so
that one native line chart overlays every run of a sweep; ``result.json`` and ``curve.parquet`` as an artifact.

Per sweep (``log_reduce``, job_type ``reduce``, same group): the sensitivity tables as ``wandb.Table``s, the
figures as images, and the reduce's files as an artifact.

Online without a network: ``logger.timeout_s`` bounds the wait (wandb's ``init_timeout`` and
``finish_timeout``); then one warning, and the run is written offline instead, for ``wandb sync`` later.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lcc import tasks
from lcc.config import WandbLogger, defaults
from lcc.io import read_json
from lcc.names import (BIN_KEYS, CURVE_KEYS, FIG_CURVE, SUMMARY_COLS, TABLES, WANDB_BIN, WANDB_CTX, WANDB_CURVE,
                       WANDB_CURVE_POINTS, WANDB_LEVEL, WANDB_X, WANDB_X_LOG2, ctx_label,
                       wandb_summary)

log = logging.getLogger(__name__)
KINDS = ("wandb", "none")


def run_id(out: Path, config_hash: str) -> str:
    """Stable per (job folder, config): a requeued or resumed job continues the same W&B run."""
    return hashlib.sha1(f"{out.resolve()}|{config_hash}".encode()).hexdigest()[:16]


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and not math.isfinite(v))


def log_spaced(curve: pd.DataFrame, n: int = WANDB_CURVE_POINTS) -> pd.DataFrame:
    """The per-position curve averaged over at most ``n`` log-spaced position groups: every position up to
    where groups would hold a single one, then wider groups. x of a group: 2^(mean log2 position)."""
    pos = curve["position"].to_numpy(dtype=np.float64)
    if len(pos) <= n:
        out = curve.copy()
        out["log2_position"] = np.log2(pos)
        return out
    edges = np.unique(np.round(np.geomspace(pos[0], pos[-1] + 1, n + 1)).astype(np.int64))
    group = np.searchsorted(edges, pos, side="right") - 1
    df = curve.assign(log2_position=np.log2(pos), _g=group)
    g = df.groupby("_g", sort=True)
    out = g.mean(numeric_only=True).reset_index(drop=True)
    single = g.size().to_numpy() == 1  # a group of one position keeps that position exactly
    out["position"] = np.where(single, out["position"], 2.0 ** out["log2_position"])
    return out


def history_rows(result: dict, curve: pd.DataFrame | None) -> list[dict]:
    """The job's history: one row per octave bin, then one per downsampled curve point."""
    rows = []
    for b in result.get("curve") or []:  # a result without a per-position curve has no bins
        lp = b["log2_pos"]
        row = {WANDB_X: 2.0 ** lp, WANDB_X_LOG2: lp}
        row.update({f"{WANDB_BIN}{k}": b[k] for k in BIN_KEYS if k != "log2_pos" and _finite(b.get(k))})
        m, se = FIG_CURVE.key, FIG_CURVE.se  # the KL band of the dashboard's KL-vs-position panel
        if _finite(b.get(se)):
            row[f"{WANDB_BIN}kl_lo"] = b[m] - b[se]
            row[f"{WANDB_BIN}kl_hi"] = b[m] + b[se]
        rows.append(row)
    if curve is not None and len(curve):
        for _, r in log_spaced(curve).iterrows():
            row = {WANDB_X: float(r["position"]), WANDB_X_LOG2: float(r["log2_position"])}
            row.update({f"{WANDB_CURVE}{k}": float(r[k]) for k in CURVE_KEYS if k in r and _finite(float(r[k]))})
            rows.append(row)
    return rows


def _settings(lg: dict):
    import wandb

    t = float(lg.get("timeout_s") or 15)
    return wandb.Settings(console="off", x_disable_stats=True, silent=True, init_timeout=t, finish_timeout=t)


def _init(lg: dict, where: Path, **kw):
    """``wandb.init`` with a bounded wait. Online and unreachable: one warning, then the same run offline."""
    import wandb

    mode = lg.get("mode") or "offline"
    if mode not in ("offline", "online"):
        raise ValueError(f"logger.mode={mode!r} is invalid; valid: offline, online")
    common = dict(project=lg.get("project") or "lcc", entity=lg.get("entity"), dir=str(where), resume="allow", **kw)
    if mode == "online":
        try:
            return wandb.init(mode="online", settings=_settings(lg), **common)
        except Exception as e:  # noqa: BLE001 - no network, bad key, server down: keep the run offline
            log.warning("W&B online unreachable after at most %ss (%s: %s); this run is written offline to %s "
                        "instead: upload it later with `wandb sync %s/wandb/offline-run-*`", lg.get("timeout_s"),
                        type(e).__name__, str(e).splitlines()[0][:200], where, where)
            try:
                wandb.teardown()
            except Exception:  # noqa: BLE001
                pass
    return wandb.init(mode="offline", settings=_settings(lg), **common)


def job_tags(result: dict, extra) -> list[str]:
    tags = [str(result["model"]), str(result["compressor"]), str(result["level"]), f"ctx={ctx_label(result['ctx'])}"]
    if (task := tasks.task_of(result)) != tasks.DEFAULT:
        tags.append(f"task={task}")
    return list(dict.fromkeys(t[:64] for t in tags + [str(t) for t in (extra or [])]))




def log_result(cfg, result: dict, out: Path) -> None:
    """Log one finished job (its files are complete before this runs)."""
    from omegaconf import OmegaConf

    lg = OmegaConf.to_container(cfg.logger, resolve=True)
    if lg["kind"] == "none":
        return
    if lg["kind"] != "wandb":
        log.warning("logger.kind=%r is unknown (valid: %s); nothing logged", lg["kind"], ", ".join(KINDS))
        return
    try:
        import wandb

        config = {**result["config"], WANDB_LEVEL: result["level"], WANDB_CTX: result["ctx"]}
        run = _init(lg, out, group=lg.get("group") or out.parent.name, name=out.name, job_type="job",
                    id=run_id(out, result["config_hash"]), config=config, tags=job_tags(result, lg.get("tags")))
        try:
            run.define_metric(WANDB_X, summary="none")
            run.define_metric(WANDB_X_LOG2, summary="none")
            for prefix in (WANDB_BIN, WANDB_CURVE):  # default x: log2 position; no "last value" summaries
                run.define_metric(f"{prefix}*", step_metric=WANDB_X_LOG2, summary="none")
            curve_file = out / "curve.parquet"
            curve = pd.read_parquet(curve_file) if curve_file.exists() else None
            for row in history_rows(result, curve):
                run.log(row)
            for key in ("by_depth", "lm_eval"):  # task jobs (docs/tasks.md): per-depth accuracy, lm-eval scores
                if rows := result.get(key):
                    cols = list(rows[0].keys())
                    run.log({f"task/{key}": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
            shown = wandb_summary(result)
            run.summary.update({**{k: v for k, v in result["summary"].items() if k in shown},
                                **{f"time/{k}": v for k, v in result["timings"].items()},
                                "level": result["level"], "compressor": result["compressor"],
                                "ctx": result["ctx"], "model": result["model"],
                                "task": tasks.task_of(result)})
            art = wandb.Artifact(f"job-{run.id}", type="lcc-job",
                                 metadata={"job": out.name, "config_hash": result["config_hash"]})
            for f in ["result.json", "curve.parquet", "samples.parquet"]:
                if (out / f).exists():
                    art.add_file(str(out / f), name=f)
            run.log_artifact(art)
        finally:
            run.finish()
    except Exception as e:  # noqa: BLE001 - logging must never lose a finished job
        log.warning("W&B logging failed (%s: %s); local results in %s are complete", type(e).__name__, e, out)


def wandb_defaults() -> dict:
    """logger=wandb's defaults (lcc.config.WandbLogger): those of a reduce run whose jobs did not log to W&B."""
    return defaults(WandbLogger)


def sweep_logger(sweep_dir: Path, ok: pd.DataFrame, overrides: dict) -> dict | None:
    """The logger settings of a sweep's jobs (from their result.json; the first that used W&B), with
    ``overrides`` applied; None when no job logged to W&B and nothing was overridden."""
    found = None
    for job in ok.job if len(ok) else []:
        try:
            lg = read_json(sweep_dir / job / "result.json").get("config", {}).get("logger") or {}
        except (OSError, ValueError):
            continue
        if lg.get("kind") == "wandb":
            found = lg
            break
    if found is None and not overrides:
        return None
    return {**wandb_defaults(), **(found or {}), **overrides, "kind": "wandb"}


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")[:100] or "sweep"


def reduce_run_id(sweep_dir: Path) -> str:
    """Stable per sweep dir: a later reduce of the same sweep continues its reduce run."""
    return hashlib.sha1(f"{sweep_dir.resolve()}|reduce".encode()).hexdigest()[:16]


def log_reduce(sweep_dir: Path, lg: dict, df: pd.DataFrame, tables: dict[str, pd.DataFrame],
               files: list[Path]) -> None:
    """The sweep's W&B reduce run: tables, figures, files. Failures are one warning."""
    try:
        import wandb

        group = lg.get("group") or sweep_dir.name
        ok = df[df.status == "ok"]
        counts = df.status.value_counts().to_dict()
        config = {"sweep_dir": str(sweep_dir.resolve()), "n_jobs": len(df),
                  **{name: sorted({str(v) for v in ok[k].dropna()}) for name, k in (
                      ("models", "model"), ("data", "data"), ("compressors", "compressor"), ("levels", "level"))},
                  "ctx_tokens": sorted({int(c) for c in ok.ctx.dropna()}) if len(ok) else []}
        run = _init(lg, sweep_dir, group=group, name=f"reduce {group}", job_type="reduce",
                    id=reduce_run_id(sweep_dir), config=config,
                    tags=list(dict.fromkeys(["reduce", *[str(t) for t in (lg.get("tags") or [])]])))
        try:
            payload: dict[str, Any] = {}
            cols = [c for c in ["job", "model", "data", "compressor", "level", "ctx"] + SUMMARY_COLS if c in ok]
            num = ok[cols].astype(object).where(ok[cols].notna(), None)
            payload["sensitivity"] = wandb.Table(dataframe=pd.DataFrame(num.values.tolist(), columns=cols))
            slugs = {t.label: t.slug for t in TABLES}
            for name, t in tables.items():
                t = t.reset_index()
                payload[f"table/{slugs.get(name, _slug(name))}"] = wandb.Table(
                    columns=[str(c) for c in t.columns], data=t.astype(str).values.tolist())
            jcols = [c for c in ("job", "status", "overrides", "error") if c in df]
            payload["jobs"] = wandb.Table(columns=jcols, data=df[jcols].fillna("").astype(str).values.tolist())
            for f in files:
                if f.suffix == ".png":
                    payload[f"figure/{f.stem}"] = wandb.Image(str(f), caption=f.stem)
            run.log(payload)
            run.summary.update({"jobs_total": len(df), **{f"jobs_{s}": int(counts.get(s, 0))
                                                          for s in ("ok", "failed", "missing")}})
            art = wandb.Artifact(f"sweep-{_slug(group)}", type="lcc-sweep",
                                 metadata={"sweep_dir": str(sweep_dir.resolve())})
            for f in files:
                if f.exists():
                    art.add_file(str(f), name=str(f.relative_to(sweep_dir)))
            run.log_artifact(art)
        finally:
            run.finish()
        log.info("W&B reduce run of %s logged (%s mode, group %s)", sweep_dir, lg.get("mode"), group)
    except Exception as e:  # noqa: BLE001
        log.warning("W&B reduce run failed (%s: %s); the reduce's files in %s are complete",
                    type(e).__name__, e, sweep_dir)
