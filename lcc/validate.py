"""Every key of a composed job config, checked before anything is launched and without loading a model.

``validate(cfg)`` raises one :class:`lcc.ConfigError` listing every bad key of the job, each as
``<key>=<value> is invalid; valid: <choices>``. The lcc sweeper calls it for every job of a multirun before
launching any (``hydra_plugins/lcc_sweeper``), a single run (``python -m lcc.sweep`` without ``-m``) calls it
from a Hydra callback before its job folder exists, and ``lcc.job.run`` calls it again (library use).

Each group's own keys are checked by its schema (``lcc.config``: the top-level keys, ``ctx``, ``model`` and
``data`` by kind, ``calib``, ``logger``, ``cache``; ``lcc.compressors`` and ``lcc.tasks``: their classes). This
module adds the rules between groups (ctx against the model's trained context, the task against the rest of the
job) and the facts of modules above the schemas (``dtype`` against ``lcc.models.DTYPES``, ``model.arch`` against
``lcc.archs.ARCHS``, the embedded GGUF file). Nothing below ``lcc.job`` imports it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from lcc import ConfigError, compressors, tasks
from lcc.archs import ARCHS
from lcc.checks import choice, field_problems, is_int, unknown_keys
from lcc.config import MISSING_HINT, SMOLLM2_PACKAGE, LccConfig, context_problem, node_problems
from lcc.models import DTYPES, smollm2_gguf

DTYPE = choice("auto", *DTYPES, listed=False)
ARCH = choice(*ARCHS, listed=False)


def _container(cfg: DictConfig, key: str, p: list) -> Any:
    """The resolved plain value of ``cfg[key]`` (None and a problem if it does not resolve)."""
    try:
        v = cfg[key]
        return OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
    except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve is a config error
        p.append(f"{key} does not resolve: {type(e).__name__}: {str(e).splitlines()[0]}")
        return None


def _missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys whose value is ``???``, found without resolving anything (OmegaConf.missing_keys resolves
    interpolations and raises on ``name: ${.name_or_path}`` when name_or_path is missing)."""
    out = []
    for k in node:
        child = node._get_node(k)
        if child is None:
            continue
        if child._is_missing() and not child._is_interpolation():
            out.append(f"{prefix}{k}")
        elif isinstance(child, DictConfig) and not child._is_interpolation():
            out += _missing_keys(child, f"{prefix}{k}.")
    return out


def problems(cfg: DictConfig) -> list[str]:
    """Every problem of a composed job config (empty if it is valid)."""
    # Hydra's own node (and output_dir, which points into it) are Hydra's business, and not resolvable
    # before a job runs
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("hydra", "output_dir")])
    p = [f"{k} is missing (???); valid: " + MISSING_HINT.get(k, "a value on the command line: " + k + "=...")
         for k in _missing_keys(cfg)]
    if p:
        return p
    p = unknown_keys(LccConfig, cfg, "", LccConfig.what, ("hydra",))
    known = {f.name for f in dataclasses.fields(LccConfig)}
    top = {k: _container(cfg, k, p) for k in cfg if k in known}
    if p:
        return p

    p = field_problems(LccConfig, top)
    p += [f"dtype={top.get('dtype')!r} is invalid; valid: {DTYPE.text}"] if not DTYPE.ok(top.get("dtype")) else []
    ctx, model = top.get("ctx"), top.get("model")
    for key in ("ctx", "model"):
        p += node_problems(key, top.get(key))
    if isinstance(model, dict) and model.get("kind") == "tiny_arch" and not ARCH.ok(model.get("arch")):
        p.append(f"model.arch={model.get('arch')!r} is invalid; valid: {ARCH.text}")
    if isinstance(model, dict) and model.get("kind") == "gguf" and model.get("package") == SMOLLM2_PACKAGE:
        try:
            smollm2_gguf()
        except ConfigError as e:
            p.append(str(e))
    if not p and is_int(ctx.get("tokens")):
        if why := context_problem(ctx["tokens"], model.get("max_context"), top.get("allow_long_context"),
                                  model.get("name")):
            p.append(why)
    for key in ("data", "calib", "logger", "cache"):
        p += node_problems(key, top.get(key))

    comp = top.get("compressor")
    if isinstance(comp, dict):
        try:
            compressors.validate(comp)
        except ConfigError as e:
            p.append(str(e))
    else:
        p.append(f"compressor={comp!r} is invalid; valid: a compressor config (compressor=quant, magnitude, ...)")

    task = top.get("task")  # absent in configs from before the task group: task=kl
    if task is not None and not isinstance(task, dict):
        p.append(f"task={task!r} is invalid; valid: a task config (task=kl, passkey, niah, vt, lm_eval)")
    elif task is not None and not p:  # its parameters, and what it needs of ctx (lcc/tasks/)
        try:
            tasks.validate(cfg)
        except ConfigError as e:
            p.append(str(e))
    return p


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem of the job config ``cfg``."""
    found = problems(cfg)
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"{len(found)} invalid settings:\n" + "\n".join(f"  - {x}" for x in found))


class ValidateCallback(Callback):
    """Hydra callback (``hydra.callbacks.lcc_validate`` in sweep.yaml): a single run is validated before Hydra
    creates its folder, so a bad value writes nothing. (A multirun is validated by the lcc sweeper.)
    Hydra turns an exception raised by a callback into a warning and goes on, so a bad config prints its
    message and exits with status 1 (SystemExit) instead."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        import sys

        found = problems(config)
        if found:
            sys.stderr.write("invalid config; nothing was launched:\n" + "\n".join(f"  {x}" for x in found) + "\n")
            raise SystemExit(1)
