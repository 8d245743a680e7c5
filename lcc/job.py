"""One job: validate -> skip if finished -> build the job context once (``lcc.context.open_job``: seed,
compressor, caches, loaded model, the task's inputs, calibration batch, checks) -> the task runs on it
(``Task.run``: dense reference, compress, compressed evaluation, files) -> result.json -> log.

``run(cfg)`` is pure with respect to its config: everything it writes goes under ``cfg.output_dir``.
``result.json`` is written last and atomically; it is the job's completion marker.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import lcc
from lcc import ConfigError, tasks
from lcc.context import Loaded, check_context, compress_model, dense_head, load_step, open_job  # noqa: F401
from lcc.io import files_problem, read_json, write_json
from lcc.logger import log_result
from lcc.config import VOLATILE_KEYS
from lcc.validate import validate  # noqa: F401  (validate: lcc.job.validate)

log = logging.getLogger(__name__)

def job_config(cfg: DictConfig) -> dict:
    """The resolved config of a job without Hydra's own node."""
    return OmegaConf.to_container(cfg, resolve=True)


def config_hash(cfg: dict) -> str:
    keep = {k: v for k, v in cfg.items() if k not in VOLATILE_KEYS}
    if tasks.is_implicit(keep.get("task")):  # the default task: results from before the task group stay valid
        del keep["task"]
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def completed(out: Path, chash: str) -> dict | None:
    """The finished result in ``out`` if it is complete, was made from the same config, and every file it
    lists matches the size and checksum recorded in it (a truncated or edited file makes the job rerun)."""
    try:
        res = read_json(out / "result.json")
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("status") != "ok" or res.get("config_hash") != chash:
        return None
    if (why := files_problem(out, res)):
        log.warning("finished job in %s is not trusted and runs again: %s", out, why)
        return None
    return res


def _set_aside_stale(out: Path) -> None:
    """A result from another config must not look like this run's, and must not be lost either: result.json
    becomes ``result.stale-<hash>-<time>.json`` and the files it lists move, under their own names, into
    ``stale-<hash>-<time>/``, so this run cannot overwrite them and the stale record still verifies
    (``lcc.io.files_problem(out / "stale-<hash>-<time>", <its result>)``)."""
    old = out / "result.json"
    if old.exists():
        files: list = []
        try:
            res = read_json(old)
            tag = (res.get("config_hash") if isinstance(res, dict) else None) or "unknown"
            files = res.get("files") if isinstance(res, dict) and isinstance(res.get("files"), list) else []
        except (OSError, ValueError):
            tag = "unreadable"
        stamp = f"{tag}-{int(time.time())}"
        keep = [f for f in files if isinstance(f, str) and f and Path(f).name == f and (out / f).is_file()]
        if keep:
            (out / f"stale-{stamp}").mkdir(exist_ok=True)
            for f in keep:
                (out / f).rename(out / f"stale-{stamp}" / f)
        old.rename(out / f"result.stale-{stamp}.json")


def run(cfg: DictConfig) -> dict:
    """Run one job and return its result (also written to ``<output_dir>/result.json``)."""
    out = Path(cfg.output_dir)
    validate(cfg)
    conf = job_config(cfg)
    chash = config_hash(conf)
    if cfg.resume and (done := completed(out, chash)):
        log.info("job already complete for this config, skipping: %s", out)
        return done
    out.mkdir(parents=True, exist_ok=True)
    _set_aside_stale(out)
    result: dict[str, Any] = {"status": "running", "config": conf, "config_hash": chash, "versions": lcc.versions()}
    try:
        task = tasks.of_job(cfg)
        job = open_job(cfg, out, task)
        result.update(job.result(task.run(job)))
        result["status"] = "ok"
    except Exception as e:
        result.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        write_json(out / "result.json", result)
        log.error("job failed: %s (details in %s)", result["error"], out / "result.json")
        raise
    write_json(out / "result.json", result)
    log_step(cfg, result, out)
    return result


def log_step(cfg: DictConfig, result: dict, out: Path) -> None:
    """W&B (never loses the local result), then one line in the job's log."""
    log_result(cfg, result, out)
    log.info("done: %s  -> %s", tasks.get(tasks.task_of(result)).done_line(result), out)
