"""The task contract and its name registry (task metrics are entries of ``lcc.metrics.registry``).

A task is a small dataclass: its fields are its parameters, declared once with ``lcc.checks.param`` (default, one
line of documentation, valid values); the dataclass is also the Hydra schema of ``task=<name>`` (stored by
``lcc.tasks``, no YAML). ``check()`` checks every field against its declaration, then a subclass's rules between
fields (a ``ConfigError`` naming the value and the valid choices). A job (``lcc.job.run``) builds one context
(``lcc.context.JobContext``: compressor, caches, loaded model, calibration batch) and calls the task's hooks:

* ``prepare(job)``: the task's inputs (token windows, prompts), made before the calibration batch;
* ``probe_ids(job)``: token ids the compressor checks its tokenizer against (e.g. a checkpoint's);
* ``run(job)``: dense reference, ``job.compress()``, compressed evaluation, files; returns the result's body
  (``summary``, its own rows, ``files``); ``job.result`` adds the entries every result carries.

and, reading results (no model): ``done_line(result)`` (the job's last log line) and ``reporter`` (reduce's
tables of its jobs: ``reporter(sweep_dir, jobs, plots) -> (markdown lines, files)``; jobs whose results carry a
per-position ``curve`` are reduce's own sensitivity tables). ``family`` names the metric family of its summary
(``lcc.metrics.registry``: kl, synthetic, lm_eval), written into the result as ``metrics``.

A subclass that sets ``name`` registers itself (``lcc.registry``: a second task under a taken name is an error);
``lcc.tasks`` imports every module of the package (module discovery), so adding a task is adding one module.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from lcc import ConfigError
from lcc.checks import field_problems
from lcc.metrics import registry
from lcc.registry import Registry

#: every task by name (a subclass that sets ``name`` registers itself)
REGISTRY: Registry[type["Task"]] = Registry("task")
get = REGISTRY.get


@dataclass
class Task:
    """Base class: subclasses are dataclasses whose fields are the task's parameters."""

    name: ClassVar[str]
    family: ClassVar[str]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "name" in vars(cls):
            REGISTRY.register(cls)

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
        """Every field against its declaration (its type, then its ``valid`` rule); a subclass adds its rules
        between fields after ``super().check()``. Raises ConfigError naming the value and the valid choices."""
        if problems := field_problems(type(self), self, "task."):
            raise ConfigError(problems[0])

    #: True for the default task only: its config node ``{name: <name>}`` is left out of the config hash
    implicit: ClassVar[bool] = False
    #: reduce's report of this task's jobs: ``reporter(sweep_dir, jobs, plots) -> (lines, files)``, or None
    reporter: ClassVar[Callable | None] = None

    def check_job(self, cfg: Any) -> None:
        """Checks of the rest of a job's config that this task needs (no model loaded)."""

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- the job (lcc.context.JobContext) --------------------------------------------------------------
    def prepare(self, job: Any) -> Any:
        """The task's inputs (made before the calibration batch; timed as ``data_s``)."""
        return None

    def probe_ids(self, job: Any) -> Any:
        """Token ids the compressor checks its tokenizer against (None: no check)."""
        return None

    def run(self, job: Any) -> dict[str, Any]:
        """Dense reference, ``job.compress()``, compressed evaluation, files: the result's body."""
        raise NotImplementedError

    # ---- results --------------------------------------------------------------------------------------
    @classmethod
    def done_line(cls, result: dict) -> str:
        """The job's last log line."""
        line = registry.log_line(result["summary"], cls.family)
        return f"{result['task']} {result['compressor']} {result['level']} ctx={result['ctx']}  {line}"
