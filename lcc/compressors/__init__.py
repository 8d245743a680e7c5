"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Compressors, registered by name: every module of this package is imported (discovered, not listed), and
every :class:`~lcc.compressors.base.Compressor` subclass with a ``name`` registers itself.

``build(cfg)`` turns a ``compressor`` config into an instance (validating it). Each registered compressor is
also the Hydra config ``compressor=<name>``: its schema (``config_node``) is made from the class's fields and
stored in Hydra's ConfigStore, so the defaults exist once, in Python. ``python -m lcc.compressors`` lists
every compressor with its parameters.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from lcc import ConfigError, checks
from lcc.compressors.base import REGISTRY, Compressor, QuantGrid, Storage, Targets, build, get, qualify  # noqa: F401

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "__main__":
        importlib.import_module(f"{__name__}.{_mod.name}")


def validate(cfg: Any) -> None:
    """Raise ConfigError naming the bad key (``compressor.bits=9 ...``) and the valid choices: constructs the
    compressor from a ``compressor`` config."""
    try:
        build(cfg)
    except ConfigError as e:
        name = (cfg or {}).get("name") if hasattr(cfg, "get") else None
        keys = [f.name for f in REGISTRY[name].param_fields()] if name in REGISTRY else []
        raise ConfigError(qualify(str(e), keys)) from None


@dataclasses.dataclass
class TargetsConfig:
    """The Hydra schema of ``compressor.targets`` (values are checked by ``Targets``)."""

    modules: Any = None
    layers: Any = None
    lm_head: Any = False


def config_node(cls: type[Compressor]) -> type:
    """The Hydra schema of ``compressor=<cls.name>``: ``name``, ``targets`` where the compressor takes it, and
    one key per parameter with its config default (``lcc.checks.config_node``)."""
    first: list[tuple] = [("name", str, dataclasses.field(default=cls.name))]
    if cls.uses_targets:
        first.append(("targets", TargetsConfig, dataclasses.field(default_factory=TargetsConfig)))
    return checks.config_node(cls, module=__name__, first=first, skip=("targets",))


def _store_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, cls in sorted(REGISTRY.items()):
        cs.store(group="compressor", name=name, node=config_node(cls), provider="lcc")


_store_configs()
