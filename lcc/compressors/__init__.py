"""Compressors, registered by name. ``build(cfg)`` turns a ``compressor`` config into an instance."""
from __future__ import annotations

from typing import Any

from lcc import ConfigError
from lcc.compressors.base import REGISTRY, Compressor, Targets, get, qualify, register  # noqa: F401
from lcc.compressors import simple  # noqa: F401  (registers none, magnitude, quant)
from lcc.compressors import prune, gptq, quant_wa, mixed, kv, compose  # noqa: F401,E401  (register the rest)


def _plain(cfg: Any) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def build(cfg: Any) -> Compressor:
    """``cfg`` is a mapping with ``name`` and the compressor's parameters."""
    params = _plain(cfg)
    name = params.pop("name", None)
    return get(name)(**params)


def validate(cfg: Any) -> None:
    """Raise ConfigError naming the bad key (``compressor.bits=9 ...``) and the valid choices."""
    params = _plain(cfg)
    name = params.pop("name", None)
    targets = params.pop("targets", None)
    cls = get(name)
    try:
        cls.validate(params)
        Targets.check(targets)
    except ConfigError as e:
        raise ConfigError(qualify(str(e), cls.params)) from None
