"""The ``cache:`` node of a job config, and which of the job's steps go through which cache."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lcc import ConfigError
from lcc.cache.compressed import CompressedCache
from lcc.cache.dense import DenseCache, DenseEntry
from lcc.cache.prefill import PrefillStore
from lcc.compressors import Compressor, Storage
from lcc.models import cache_root


@dataclass
class CacheSettings:
    enabled: bool
    dir: Path
    dense: bool
    compressed: str | bool  # "auto", True or False: see cache_compressed()
    press_prefill: bool = False

    def cache_compressed(self, comp: Compressor, device: torch.device | str | None = None) -> bool:
        """Whether ``comp``'s compressed weights go through the cache. ``auto`` keeps calibrated methods (gptq,
        sparsegpt, wanda, mixed with activation saliency, compositions with such a stage) and masking pruners
        (magnitude, random: an entry is one bit per weight) everywhere, and data-free weight quantizers (quant,
        mixed with max_abs saliency) where it pays: on a CPU, where a hit of their integer-code entry is 4-7x
        faster than recomputing (SmolLM2 quant w4g128: 0.22 s against 1.6 s, 55 MiB; docs/caching.md), not on a
        GPU (7B on an H100: quant 0.2 s, less than reading its 3.5 GB entry). ``device``: the job's (None: a
        GPU is assumed). Nothing is cached for a compressor whose storage is ``NONE`` (hooks: kv, quant_wa; none)."""
        storage = comp.storage()
        if not (self.enabled and self.compressed and storage is not Storage.NONE):
            return False
        on_cpu = device is not None and torch.device(device).type == "cpu"
        return self.compressed is True or comp.needs_calibration() or storage is Storage.MASK or on_cpu

    def uncached_status(self, comp: Compressor) -> str:
        """Why compression does not go through the cache: off (caching is), uncacheable, or recomputed."""
        if not self.enabled or self.compressed is False:
            return "off"
        return "uncacheable" if comp.storage() is Storage.NONE else "recomputed"

    def dense_cache(self, cfg: Any, model, windows: torch.Tensor, device: torch.device, dtype: torch.dtype):
        """The job's dense-reference cache entry, or None if the dense reference is not cached."""
        if not (self.enabled and self.dense):
            return None
        return DenseCache.for_job(self.dir, cfg, model, windows, device, dtype)

    def dense_entry(self, inputs: Callable[[], dict]):
        """A task's dense-reference entry (``inputs()``: everything it depends on, ``lcc.cache.dense_inputs``),
        or None if dense references are not cached."""
        if not (self.enabled and self.dense):
            return None
        return DenseEntry.at(self.dir, inputs())

    def press_prefill_store(self, cfg: Any, comp: Compressor, model, device: torch.device, dtype: torch.dtype):
        """Where a replayable press alone (the weights dense) records and replays its prefills
        (lcc.cache.prefill), or None: off, or ``comp`` is not such a press."""
        if not (self.enabled and self.press_prefill and getattr(comp, "replayable", False)):
            return None
        return PrefillStore.for_job(self.dir, cfg, model, comp, device, dtype)

    def compressed_cache(self, cfg: Any, comp: Compressor, model, calib: torch.Tensor | None,
                         device: torch.device, dtype: torch.dtype):
        """The job's compressed-weights cache entry, or None if ``comp``'s weights are not cached."""
        if not self.cache_compressed(comp, device):
            return None
        return CompressedCache.for_job(self.dir, cfg, comp, model, calib, device, dtype)


def settings(cfg: Any) -> CacheSettings:
    """The ``cache:`` node of a job config; every key is optional. Raises ConfigError for a bad value."""
    c = cfg.get("cache") or {}
    get = c.get if hasattr(c, "get") else (lambda k, d=None: d)
    d = get("dir", None)
    compressed = get("compressed", "auto")
    if not (compressed == "auto" or isinstance(compressed, bool)):
        raise ConfigError(f"cache.compressed={compressed!r} is invalid; valid: auto (calibrated compressors and "
                          f"masking pruners; on a CPU every cacheable compressor), true (every cacheable "
                          f"compressor), false")
    for k in ("enabled", "dense", "press_prefill"):
        if not isinstance(get(k, True), bool):
            raise ConfigError(f"cache.{k}={get(k)!r} is invalid; valid: true or false (a YAML boolean)")
    return CacheSettings(enabled=get("enabled", True),
                         dir=Path(os.path.expanduser(str(d))) if d else cache_root() / "refs",
                         dense=get("dense", True), compressed=compressed,
                         press_prefill=get("press_prefill", False))
