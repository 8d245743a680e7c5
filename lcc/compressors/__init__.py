"""Compressors, registered by name. ``build(cfg)`` turns a ``compressor`` config into an instance."""
from __future__ import annotations

from typing import Any

from lcc.compressors.base import REGISTRY, Compressor, get, register  # noqa: F401
from lcc.compressors import simple  # noqa: F401  (registers none, magnitude, quant)
from lcc.compressors import prune, gptq, quant_wa, mixed, kv, compose  # noqa: F401,E401  (register the rest)


def build(cfg: Any) -> Compressor:
    """``cfg`` is a mapping with ``name`` and the compressor's parameters."""
    params = dict(cfg)
    name = params.pop("name", None)
    return get(name)(**params)


def validate(cfg: Any) -> None:
    params = dict(cfg)
    get(params.pop("name", None)).validate({k: v for k, v in params.items() if k != "targets"})
