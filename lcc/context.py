"""The job context: what every task runs on, built once per job by ``open_job`` (``lcc.job.run`` calls it).

seed -> compressor -> cache settings -> loaded model -> the task's inputs (``Task.prepare``) and the calibration
batch -> check the compressor's targets and tokenizer. The task then runs on the context (``Task.run``): its
dense reference, ``job.compress()`` (in place, through the compressed-weights cache, checked to have changed
what it targets), its compressed evaluation; ``job.result(body)`` adds the entries every result carries
(model, data, ctx, task, compressor, level, compress_info, weights, timings, cache, files, checksums).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lcc import ConfigError, compressors
from lcc.cache import CacheSettings, CompressedCache, Compression, settings
from lcc.compressors.base import weight_fingerprint
from lcc.coverage import coverage, unchanged_problem
from lcc.data import calibration_batch
from lcc.forward import logits_fn
from lcc.io import file_records
from lcc.models import load_model, resolve_device, resolve_dtype
from lcc.config import context_problem

log = logging.getLogger("lcc.job")


# ---- the steps every job shares -------------------------------------------------------------------------
@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    seconds: float


def check_context(cfg: DictConfig, max_ctx: int | None) -> None:
    if (why := context_problem(cfg.ctx.tokens, max_ctx, cfg.allow_long_context, cfg.model.name)):
        raise ConfigError(why)


def load_step(cfg: DictConfig) -> Loaded:
    """The model on its device, in its dtype; the context length checked against the loaded model."""
    t = time.perf_counter()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, tok, max_ctx = load_model(cfg.model, device, dtype)
    check_context(cfg, max_ctx)  # again with the loaded model's own length (hf models may leave it null)
    return Loaded(model, tok, device, dtype, time.perf_counter() - t)


def dense_head(model, comp: compressors.Compressor):
    """hidden -> dense logits: the model's head, or a copy of its dense weight if ``comp`` targets it."""
    w = model.get_output_embeddings().weight.detach().clone() if comp.targets.lm_head else None
    return logits_fn(model, w)


def compress_model(comp: compressors.Compressor, model, calib: torch.Tensor | None, seed: int = 0,
                  cache: CompressedCache | None = None, uncached: str = "off") -> Compression:
    """Compress ``model`` in place, or apply its compressed weights from the cache; then check that it changed
    something (``weights``: targeted and changed Linears). ``uncached``: the status to report when ``cache`` is
    None (off, uncacheable, recomputed)."""
    torch.manual_seed(seed)  # compress() sees the same RNG state whether or not the dense pass ran
    lins = comp.touched_linears(model)
    before = {n: weight_fingerprint(m) for n, m in lins.items()}

    def compute():
        log.info("compressing with %s (%s)", comp.name, comp.level())
        t = time.perf_counter()
        info = comp.compress(model, calib if comp.needs_calibration() else None) or {}
        return info, time.perf_counter() - t
    result = cache.get_or_compute(compute) if cache else Compression(*compute(), status=uncached)
    changed_names = {n for n, m in lins.items() if weight_fingerprint(m) != before[n]}
    changed = len(changed_names)
    if comp.uses_targets and changed == 0 and not comp.acts_at_runtime():
        raise ConfigError(f"compressor {comp.name} ({comp.level()}) changed no weight of its {len(lins)} targeted "
                          f"Linear layers: the model is still the dense one. Use compressor=none for the dense "
                          f"baseline, or a level that compresses")
    if comp.uses_targets and comp.changes_weights() and changed < len(lins):
        raise ConfigError(unchanged_problem(comp.name, comp.level(), [n for n in lins if n not in changed_names],
                                            len(lins)))
    result.weights = {"targeted_linears": len(lins), "changed_linears": changed,
                      "coverage": coverage(model, lins, changed_names)}
    return result


# ---- the context --------------------------------------------------------------------------------------
@dataclass
class JobContext:
    """One job's config, compressor, caches, loaded model, the task's inputs and the calibration batch; the
    timings and cache report the task adds to as it runs."""

    cfg: DictConfig
    out: Path
    task: Any  # lcc.tasks.base.Task
    comp: compressors.Compressor
    caches: CacheSettings
    loaded: Loaded
    inputs: Any = None  # what the task's prepare() returned (token windows, prompts, ...)
    calib: torch.Tensor | None = None
    t0: float = 0.0
    timings: dict[str, float | None] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=lambda: {"dense": "off"})
    compression: Compression | None = None

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def ctx(self) -> int:
        return int(self.cfg.ctx.tokens)

    def dense_head(self):
        """hidden -> dense logits (call before ``compress``)."""
        return dense_head(self.model, self.comp)

    def dense_cached(self, status: str, key: str | None, cache_s: float | None) -> None:
        """Record the dense reference's cache status (hit, miss, off), its key and time in the cache."""
        self.cache["dense"] = status
        if key:
            self.cache["dense_key"] = key
        self.timings["dense_cache_s"] = cache_s

    def compress(self) -> Compression:
        """Compress the model in place (or apply the cached compressed weights); checked, timed, reported."""
        m = self.loaded
        self.compression = c = compress_model(
            self.comp, m.model, self.calib, self.cfg.seed,
            self.caches.compressed_cache(self.cfg, self.comp, m.model, self.calib, m.device, m.dtype),
            uncached=self.caches.uncached_status(self.comp))
        self.timings.update(compress_s=c.compress_s, compress_cache_s=c.cache_s)
        return c

    def cache_report(self) -> dict[str, Any]:
        """result.json's ``cache``: hit/miss/off/... of both caches, their folder and keys where used."""
        c = self.compression
        rep: dict[str, Any] = {"dense": self.cache["dense"], "compressed": c.status if c else "off"}
        if self.cache.get("dense_key") or (c and c.key):
            rep["dir"] = str(self.caches.dir)
        if self.cache.get("dense_key"):
            rep["dense_key"] = self.cache["dense_key"]
        if c and c.key:
            rep["compressed_key"] = c.key
        rep.update({k: v for k, v in self.cache.items() if k.startswith("press_prefill")})
        return rep

    def result(self, body: dict[str, Any]) -> dict[str, Any]:
        """The task's ``body`` (summary, its rows, files) with the entries every result carries."""
        if self.compression is None:
            raise RuntimeError(f"task {self.task.name} did not compress the model (JobContext.compress)")
        c = self.compression
        files = list(body.pop("files", []))
        self.timings["total_s"] = time.perf_counter() - self.t0
        common = {"model": self.cfg.model.name, "data": self.cfg.data.name, "ctx": self.ctx,
                  "task": self.task.name, "task_params": self.task.params(), "metrics": self.task.family,
                  "compressor": self.comp.name,
                  "level": self.comp.level(), "compress_info": c.info, "weights": c.weights}
        return {**common, **body, "timings": {k: v for k, v in self.timings.items() if v is not None},
                "files": files, "checksums": file_records(self.out, files), "cache": self.cache_report()}


def open_job(cfg: DictConfig, out: Path, task: Any) -> JobContext:
    """Build the context: seed, compressor, cache settings, load, the task's inputs and the calibration batch,
    then the compressor's checks of the model's targets and of the tokenizer (before any work)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    comp = compressors.build(cfg.compressor)
    caches = settings(cfg)
    m = load_step(cfg)
    job = JobContext(cfg, Path(out), task, comp, caches, m, t0=t0)
    job.timings["load_s"] = m.seconds
    t = time.perf_counter()
    job.inputs = task.prepare(job)
    job.calib = calibration_batch(cfg.calib, m.tokenizer) if comp.needs_calibration() else None
    job.timings["data_s"] = time.perf_counter() - t
    comp.check_targets(m.model)  # a target set that selects nothing is an error, not a dense "compressed" result
    comp.check_inputs(m.tokenizer, task.probe_ids(job))  # e.g. a checkpoint's tokenizer, before any work
    return job
