"""One job, read as a recipe (``_evaluate``): load -> windows -> dense step -> compress step -> compressed
pass -> summarize -> write -> log. Each step is a small function returning a small result object;
``bench/gpu.py`` times the same steps.

``run(cfg)`` is pure with respect to its config: everything it writes goes under ``cfg.output_dir``.
``result.json`` is written last and atomically; it is the job's completion marker.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import lcc
from lcc import ConfigError, compressors, evaluate, tasks
from lcc.cache import CompressedCache, Compression, DenseCache, DenseReference, settings
from lcc.compressors.base import weight_fingerprint
from lcc.coverage import coverage, unchanged_problem
from lcc.io import file_records, files_problem, read_json, write_json, write_parquet, write_safetensors
from lcc.metrics import position_table, summarize
from lcc.metrics.registry import log_line
from lcc.validate import VOLATILE_KEYS, context_problem, validate  # noqa: F401  (validate: lcc.job.validate)

log = logging.getLogger(__name__)

#: the files of a finished job besides result.json; their sizes and checksums are recorded in result.json
RESULT_FILES = ["tokens.safetensors", "curve.parquet"]


def job_config(cfg: DictConfig) -> dict:
    """The resolved config of a job without Hydra's own node."""
    return OmegaConf.to_container(cfg, resolve=True)


def config_hash(cfg: dict) -> str:
    keep = {k: v for k, v in cfg.items() if k not in VOLATILE_KEYS}
    if keep.get("task") == {"name": "kl"}:  # the default task: results from before the task group stay valid
        del keep["task"]
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_context(cfg: DictConfig, max_ctx: int | None) -> None:
    if (why := context_problem(cfg.ctx.tokens, max_ctx, cfg.allow_long_context, cfg.model.name)):
        raise ConfigError(why)


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
        # task=kl: per-position KL on text (below); any other task: its own runner (lcc/tasks/)
        result.update(_evaluate(cfg, out) if tasks.kind(cfg) == "kl" else tasks.run(cfg, out))
        result["status"] = "ok"
    except Exception as e:
        result.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        write_json(out / "result.json", result)
        log.error("job failed: %s (details in %s)", result["error"], out / "result.json")
        raise
    write_json(out / "result.json", result)
    log_step(cfg, result, out)
    return result


def _evaluate(cfg: DictConfig, out: Path) -> dict:
    """The recipe: every step of a job, in order."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    comp = compressors.build(cfg.compressor)
    caches = settings(cfg)
    m = load_step(cfg)
    data = data_step(cfg, m.tokenizer, comp)
    comp.check_targets(m.model)  # a target set that selects nothing is an error, not a dense "compressed" result
    comp.check_inputs(m.tokenizer, data.windows)  # e.g. a checkpoint's tokenizer, before any work
    dense = dense_step(m.model, data.windows, caches.dense_cache(cfg, m.model, data.windows, m.device, m.dtype))
    head = dense_head(m.model, comp)  # before compression: the dense output head
    compression = compress_step(comp, m.model, data.calib, cfg.seed,
                                caches.compressed_cache(cfg, comp, m.model, data.calib, m.device, m.dtype),
                                uncached=caches.uncached_status(comp))
    compared = compressed_step(m.model, data.windows, dense.hidden, head, cfg.chunk_size)
    summary, curve = summarize(compared.arrays)
    files = write_step(out, compared)
    timings = {"load_s": m.seconds, "data_s": data.seconds, "dense_forward_s": dense.forward_s,
               "compress_s": compression.compress_s, "dense_cache_s": dense.cache_s,
               "compress_cache_s": compression.cache_s, "compressed_forward_s": compared.forward_s,
               "metrics_s": compared.metrics_s, "total_s": time.perf_counter() - t0}
    return {"model": cfg.model.name, "data": cfg.data.name, "ctx": cfg.ctx.tokens, "compressor": comp.name,
            "level": comp.level(), "compress_info": compression.info, "weights": compression.weights,
            "summary": summary, "curve": curve, "timings": {k: v for k, v in timings.items() if v is not None},
            "files": files, "checksums": file_records(out, files),
            "cache": cache_report(caches.dir, dense, compression)}


# ---- the steps ------------------------------------------------------------------------------------------
@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    seconds: float


def load_step(cfg: DictConfig) -> Loaded:
    """The model on its device, in its dtype; the context length checked against the loaded model."""
    from lcc.models import load_model, resolve_device, resolve_dtype

    t = time.perf_counter()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, tok, max_ctx = load_model(cfg.model, device, dtype)
    check_context(cfg, max_ctx)  # again with the loaded model's own length (hf models may leave it null)
    return Loaded(model, tok, device, dtype, time.perf_counter() - t)


@dataclass
class Data:
    windows: torch.Tensor  # [n_docs, ctx] token ids
    calib: torch.Tensor | None  # [n_samples, seqlen] token ids, for a compressor that needs calibration
    seconds: float


def data_step(cfg: DictConfig, tokenizer: Any, comp: compressors.Compressor) -> Data:
    from lcc.data import calibration_batch, eval_windows

    t = time.perf_counter()
    windows = eval_windows(cfg.data, tokenizer, cfg.ctx.tokens, cfg.n_docs, cfg.seed)
    calib = calibration_batch(cfg.calib, tokenizer) if comp.needs_calibration() else None
    return Data(windows, calib, time.perf_counter() - t)


def dense_step(model, windows: torch.Tensor, cache: DenseCache | None = None, keep_on: str = "auto"
               ) -> DenseReference:
    """The dense model's final hidden states per window (from the cache when it holds them)."""
    def compute():
        return evaluate.dense_pass(model, windows, keep_on)
    return cache.get_or_compute(windows, compute) if cache else DenseReference(*compute())


def dense_head(model, comp: compressors.Compressor):
    """hidden -> dense logits: the model's head, or a copy of its dense weight if ``comp`` targets it."""
    w = model.get_output_embeddings().weight.detach().clone() if comp.targets.lm_head else None
    return evaluate.logits_fn(model, w)


def compress_step(comp: compressors.Compressor, model, calib: torch.Tensor | None, seed: int = 0,
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


@dataclass
class Compared:
    per_token: dict[str, torch.Tensor]  # kl, nll_p, nll_q, agree: [n_docs, ctx - 1] float32
    forward_s: float
    metrics_s: float

    @property
    def arrays(self) -> dict:
        return {k: v.numpy() for k, v in self.per_token.items()}


def compressed_step(model, windows: torch.Tensor, dense_hidden: list[torch.Tensor], dense_head_fn,
                    chunk_size: int) -> Compared:
    """The compressed model over every window, compared token by token with the dense hidden states."""
    per_tok, tm = evaluate.compressed_pass(model, windows, dense_hidden, dense_head_fn, chunk_size)
    return Compared(per_tok, tm["compressed_forward_s"], tm["metrics_s"])


def write_step(out: Path, compared: Compared) -> list[str]:
    """tokens.safetensors (per document and position) and curve.parquet (per position); their names."""
    write_safetensors(out / "tokens.safetensors", compared.per_token,
                      metadata={"rows": "documents", "cols": "positions 1.."})
    write_parquet(out / "curve.parquet", position_table(compared.arrays))
    return RESULT_FILES


def cache_report(root: Path, dense: DenseReference, compression: Compression) -> dict:
    """result.json's ``cache``: hit/miss/off/... of both caches, their folder and keys where used."""
    rep: dict[str, Any] = {"dense": dense.status, "compressed": compression.status}
    if dense.key or compression.key:
        rep["dir"] = str(root)
    if dense.key:
        rep["dense_key"] = dense.key
    if compression.key:
        rep["compressed_key"] = compression.key
    return rep


def log_step(cfg: DictConfig, result: dict, out: Path) -> None:
    """W&B (never loses the local result), then one line in the job's log."""
    from lcc.logger import log_result

    log_result(cfg, result, out)
    if result.get("task", "kl") != "kl":  # a task's metrics: the registry's synthetic / lm_eval entries
        from lcc.tasks.report import done_line
        log.info("done: %s  -> %s", done_line(result), out)
        return
    log.info("done: %s %s ctx=%d  %s  -> %s", result["compressor"], result["level"], cfg.ctx.tokens,
             log_line(result["summary"]), out)
