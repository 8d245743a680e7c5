"""One job: config -> model + data -> dense run -> compress -> compressed run -> metrics -> files -> logger.

``run(cfg)`` is pure with respect to its config: everything it writes goes under ``cfg.output_dir``.
``result.json`` is written last and atomically; it is the job's completion marker.
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import lcc
from lcc import ConfigError, compressors
from lcc.io import read_json, write_json, write_parquet, write_safetensors

log = logging.getLogger(__name__)

#: keys that do not change a job's numbers (where it runs, how it is logged)
VOLATILE_KEYS = ("output_dir", "logger", "resume", "device")


def job_config(cfg: DictConfig) -> dict:
    """The resolved config of a job without Hydra's own node."""
    return OmegaConf.to_container(cfg, resolve=True)


def config_hash(cfg: dict) -> str:
    keep = {k: v for k, v in cfg.items() if k not in VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def validate(cfg: DictConfig) -> None:
    """Checks that need no model: raise ConfigError naming the bad value and the valid choices."""
    compressors.validate(cfg.compressor)
    ctx = cfg.ctx.tokens
    if not isinstance(ctx, int) or ctx < 2:
        raise ConfigError(f"ctx.tokens={ctx!r} is invalid; valid: an integer >= 2 (or ctx=1k,2k,...,128k)")
    max_ctx = cfg.model.get("max_context")
    if max_ctx and ctx > max_ctx and not cfg.allow_long_context:
        raise ConfigError(f"ctx={ctx} tokens exceeds model {cfg.model.name}'s trained context of {max_ctx}; "
                          f"choose ctx <= {max_ctx} or set allow_long_context=true")
    if not isinstance(cfg.n_docs, int) or cfg.n_docs < 1:
        raise ConfigError(f"n_docs={cfg.n_docs!r} is invalid; valid: an integer >= 1")
    if not isinstance(cfg.chunk_size, int) or cfg.chunk_size < 1:
        raise ConfigError(f"chunk_size={cfg.chunk_size!r} is invalid; valid: an integer >= 1")


def completed(out: Path, chash: str) -> dict | None:
    """The finished result in ``out`` if it is complete and was made from the same config."""
    try:
        res = read_json(out / "result.json")
    except (OSError, ValueError):
        return None
    ok = res.get("status") == "ok" and res.get("config_hash") == chash
    ok = ok and all((out / f).exists() for f in res.get("files", []))
    return res if ok else None


def _set_aside_stale(out: Path) -> None:
    """A result from another config must not look like this run's, and must not be lost either."""
    old = out / "result.json"
    if old.exists():
        try:
            tag = read_json(old).get("config_hash") or "unknown"
        except (OSError, ValueError):
            tag = "unreadable"
        old.rename(out / f"result.stale-{tag}-{int(time.time())}.json")


def versions() -> dict:
    import transformers

    return {"lcc": lcc.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


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
    result: dict[str, Any] = {"status": "running", "config": conf, "config_hash": chash, "versions": versions()}
    try:
        result.update(_evaluate(cfg, out))
        result["status"] = "ok"
    except Exception as e:
        result.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        write_json(out / "result.json", result)
        log.error("job failed: %s (details in %s)", result["error"], out / "result.json")
        raise
    write_json(out / "result.json", result)
    from lcc.logger import log_result
    log_result(cfg, result, out)
    s = result["summary"]
    log.info("done: %s %s ctx=%d  KL %.4g ± %.2g  slope %.3g  top1 %.3f  -> %s", result["compressor"],
             result["level"], cfg.ctx.tokens, s["kl_mean"], s["kl_se"], s["kl_slope"], s["top1_agree"], out)
    return result


def _evaluate(cfg: DictConfig, out: Path) -> dict:
    from lcc.data import eval_windows
    from lcc.evaluate import compressed_pass, dense_pass, logits_fn
    from lcc.metrics import summarize
    from lcc.models import load_model, resolve_device, resolve_dtype

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    comp = compressors.build(cfg.compressor)
    model, tok, max_ctx = load_model(cfg.model, device, dtype)
    ctx = cfg.ctx.tokens
    if max_ctx and ctx > max_ctx and not cfg.allow_long_context:
        raise ConfigError(f"ctx={ctx} tokens exceeds model {cfg.model.name}'s trained context of {max_ctx}; "
                          f"choose ctx <= {max_ctx} or set allow_long_context=true")
    timings["load_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    windows = eval_windows(cfg.data, tok, ctx, cfg.n_docs, cfg.seed)
    calib = None
    if getattr(comp, "needs_calibration", comp.calibrated):
        from lcc.compressors.engine import calibration_batch
        calib = calibration_batch(cfg.calib, tok)
    timings["data_s"] = time.perf_counter() - t

    log.info("dense forward over %d x %d tokens", *windows.shape)
    dense_hidden, timings["dense_forward_s"] = dense_pass(model, windows)
    head = model.get_output_embeddings()
    dense_w = head.weight.detach().clone() if comp.targets.lm_head else None
    dense_head = logits_fn(model, dense_w)

    log.info("compressing with %s (%s)", comp.name, comp.level())
    t = time.perf_counter()
    info = comp.compress(model, calib) or {}
    timings["compress_s"] = time.perf_counter() - t

    per_tok, tm = compressed_pass(model, windows, dense_hidden, dense_head, cfg.chunk_size)
    timings.update(tm)
    arrays = {k: v.numpy() for k, v in per_tok.items()}
    summary, curve = summarize(arrays["kl"], arrays["nll_p"], arrays["nll_q"], arrays["agree"])
    positions = np.arange(1, arrays["kl"].shape[1] + 1)
    curve_df = pd.DataFrame({"position": positions, "kl_mean": arrays["kl"].mean(0),
                             "nll_dense": arrays["nll_p"].mean(0), "nll_compressed": arrays["nll_q"].mean(0),
                             "top1_agree": arrays["agree"].mean(0)})
    write_safetensors(out / "tokens.safetensors", per_tok, metadata={"rows": "documents", "cols": "positions 1.."})
    write_parquet(out / "curve.parquet", curve_df)
    timings["total_s"] = time.perf_counter() - t0
    return {"model": cfg.model.name, "data": cfg.data.name, "ctx": ctx, "compressor": comp.name,
            "level": comp.level(), "compress_info": info, "summary": summary, "curve": curve,
            "timings": timings, "files": ["tokens.safetensors", "curve.parquet"]}
