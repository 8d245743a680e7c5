"""Tasks, registered by name and discovered as the modules of this package. ``build(cfg)`` turns a ``task``
config into an instance; a job (``lcc.job.run``) runs it on one job context (``lcc.context``)."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from lcc import checks
from lcc.tasks.base import REGISTRY, Task, get  # noqa: F401

for _m in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _m.name != "__main__":  # every module: those that define a task register it (lcc.tasks.base)
        importlib.import_module(f"{__name__}.{_m.name}")

#: the task of a config without a ``task`` node and of a result without a ``task`` entry (from before the
#: task group): the one task that declares itself ``implicit``
DEFAULT: str = next(n for n, c in REGISTRY.items() if c.implicit)


def task_config(cfg: Any) -> dict:
    """The job's ``task`` node as a plain dict (``{"name": DEFAULT}`` for configs from before the task group)."""
    node = cfg.get("task") if hasattr(cfg, "get") else None
    if node is None:
        return {"name": DEFAULT}
    return OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)


def is_implicit(node: Any) -> bool:
    """Whether a resolved ``task`` node is the default task without parameters (left out of config hashes, so
    that results from before the task group stay valid)."""
    return isinstance(node, dict) and set(node) == {"name"} and node["name"] in REGISTRY \
        and REGISTRY[node["name"]].implicit


def task_of(result: dict) -> str:
    """The task name of a job's result.json."""
    return result.get("task") or DEFAULT


def build(node: Any) -> Task:
    """A task from its config node (a mapping with ``name`` and the task's parameters)."""
    params = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return get(params.pop("name", None)).from_config(params)


def of_job(cfg: Any) -> Task:
    """The task of a job config."""
    return build(task_config(cfg))


def validate(cfg: Any) -> None:
    """Check a job config's task (and what the task asks of the rest of the config)."""
    of_job(cfg).check_job(cfg)


def config_node(cls: type[Task]) -> type:
    """The Hydra schema of ``task=<cls.name>``: ``name`` and one key per field of the task's dataclass, with the
    field's default (``lcc.checks.config_node``: values typed ``Any``, the task's ``check`` names the valid ones)."""
    first = [("name", str, dataclasses.field(default=cls.name))]
    return checks.config_node(cls, name=f"{cls.__name__}TaskConfig", module=__name__, first=first)


def _store_configs() -> None:
    """``task=<name>`` for every registered task, from its class: a new task is one module."""
    cs = ConfigStore.instance()
    for name, cls in sorted(REGISTRY.items()):
        cs.store(group="task", name=name, node=config_node(cls), provider="lcc")


_store_configs()
