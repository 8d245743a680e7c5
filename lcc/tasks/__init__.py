"""Tasks, registered by name and discovered as the modules of this package. ``build(cfg)`` turns a ``task``
config into an instance; ``run(cfg, out)`` runs a job whose task is not ``kl``."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from lcc.tasks.base import REGISTRY, Task, get  # noqa: F401

for _m in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _m.name != "__main__":  # every module: those that define a task register it (lcc.tasks.base)
        importlib.import_module(f"{__name__}.{_m.name}")


def task_config(cfg: Any) -> dict:
    """The job's ``task`` node as a plain dict (``{"name": "kl"}`` for configs from before the task group)."""
    from omegaconf import OmegaConf

    node = cfg.get("task") if hasattr(cfg, "get") else None
    if node is None:
        return {"name": "kl"}
    return OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)


def build(node: Any) -> Task:
    """A task from its config node (a mapping with ``name`` and the task's parameters)."""
    from omegaconf import DictConfig, OmegaConf

    params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return get(params.pop("name", None)).from_config(params)


def of_job(cfg: Any) -> Task:
    """The task of a job config."""
    return build(task_config(cfg))


def validate(cfg: Any) -> None:
    """Check a job config's task (and what the task asks of the rest of the config)."""
    task = of_job(cfg)
    if task.kind == "lm_eval":
        from lcc.tasks.prelaunch import check_lm_eval
        check_lm_eval(cfg)
    task.check_job(cfg)


def kind(cfg: Any) -> str:
    return get(task_config(cfg).get("name")).kind


def run(cfg: Any, out: Path) -> dict:
    """The result fields of a job whose task is not ``kl`` (lcc.job.run writes them into result.json)."""
    task = of_job(cfg)
    if task.kind == "synthetic":
        from lcc.tasks.runner import evaluate
        return evaluate(cfg, out, task)
    if task.kind == "lm_eval":
        from lcc.tasks.lm_eval import evaluate as lm_evaluate
        return lm_evaluate(cfg, out, task)
    raise ValueError(f"task kind {task.kind!r} has no runner")
