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
from lcc import ConfigError, compressors, tasks
from lcc.io import file_records, files_problem, read_json, write_json, write_parquet, write_safetensors
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
        # task=kl: per-position KL on text (below); any other task: its own runner (lcc/tasks/)
        result.update(_evaluate(cfg, out) if tasks.kind(cfg) == "kl" else tasks.run(cfg, out))
        result["status"] = "ok"
    except Exception as e:
        result.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        write_json(out / "result.json", result)
        log.error("job failed: %s (details in %s)", result["error"], out / "result.json")
        raise
    write_json(out / "result.json", result)
    from lcc.logger import log_result
    log_result(cfg, result, out)
    log.info("done: %s -> %s", _done_line(result, cfg), out)
    return result


def _done_line(result: dict, cfg: DictConfig) -> str:
    if result.get("task", "kl") != "kl":
        from lcc.tasks.report import done_line
        return done_line(result)
    s = {k: float("nan") if v is None else v for k, v in result["summary"].items()}  # None: undefined (1 doc)
    return (f"{result['compressor']} {result['level']} ctx={cfg.ctx.tokens}  KL {s['kl_mean']:.4g} ± "
            f"{s['kl_se']:.2g}  slope {s['kl_slope']:.3g}  top1 {s['top1_agree']:.3f}")


def _cache_versions() -> dict:
    import transformers

    return {"lcc": lcc.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _device_id(device: torch.device) -> str:
    """Where numbers were computed: kernels differ between GPU models, CPU architectures and (on CPU)
    thread counts, and a dense reference must match the compressed pass bit for bit (none -> KL 0)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{platform.machine()}:threads={torch.get_num_threads()}"


def _model_identity(cfg: DictConfig, model) -> dict:
    """The model config plus what identifies its weights beyond the config."""
    ident: dict[str, Any] = {"config": OmegaConf.to_container(cfg.model, resolve=True)}
    if cfg.model.kind == "gguf":
        from lcc.models import smollm2_gguf
        st = smollm2_gguf().stat()
        ident["gguf"] = f"{smollm2_gguf().name}-{st.st_size}-{int(st.st_mtime)}"
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        ident["commit"] = commit
    return ident


def _tokens_sha256(ids: torch.Tensor) -> str:
    ids = ids.detach().cpu().to(torch.int64).contiguous()
    return hashlib.sha256(str(list(ids.shape)).encode() + ids.numpy().tobytes()).hexdigest()[:32]


def dense_cache_inputs(cfg: DictConfig, model, windows: torch.Tensor, device: torch.device,
                       dtype: torch.dtype) -> dict:
    """Everything the dense hidden states of a job depend on (the dense cache key is their sha256).
    The windows' token ids are in it, so a change of data/tokenizer code addresses another entry."""
    from lcc.cache import FORMAT, source_fingerprint
    from lcc.evaluate import dense_pass, final_hidden, input_device

    return {"entry": "dense_hidden", "format": FORMAT, "model": _model_identity(cfg, model),
            "data": OmegaConf.to_container(cfg.data, resolve=True), "ctx": int(cfg.ctx.tokens),
            "n_docs": int(cfg.n_docs), "seed": int(cfg.seed), "windows_sha256": _tokens_sha256(windows),
            "dtype": str(dtype), "device": _device_id(device), "versions": _cache_versions(),
            "code": source_fingerprint("models.py", functions=(final_hidden, dense_pass, input_device))}


def compressed_cache_inputs(cfg: DictConfig, comp, model, calib: torch.Tensor | None, device: torch.device,
                            dtype: torch.dtype) -> dict:
    """Everything the compressed weights depend on (not ctx, n_docs or the evaluation data)."""
    from lcc.cache import FORMAT, source_fingerprint

    calibrated = getattr(comp, "needs_calibration", comp.calibrated)
    return {"entry": "compressed_weights", "format": FORMAT, "model": _model_identity(cfg, model),
            "compressor": OmegaConf.to_container(cfg.compressor, resolve=True),
            "calib": OmegaConf.to_container(cfg.calib, resolve=True) if calibrated else None,
            "calib_sha256": _tokens_sha256(calib) if calibrated and calib is not None else None,
            "seed": int(cfg.seed), "dtype": str(dtype), "device": _device_id(device),
            "versions": _cache_versions(), "code": source_fingerprint("models.py", "compressors")}


def _dense_hidden(cfg: DictConfig, model, windows: torch.Tensor, device, dtype, store, status: dict
                  ) -> tuple[list[torch.Tensor], float]:
    """Dense final hidden states per window and the dense forward's time (the original one on a cache hit)."""
    from lcc.cache import key_of
    from lcc.evaluate import dense_pass

    if store is None:
        return dense_pass(model, windows)
    n = windows.shape[0]
    names = [f"hidden.{i:04d}" for i in range(n)]
    inputs = dense_cache_inputs(cfg, model, windows, device, dtype)
    key = key_of(inputs)

    def compute():
        log.info("dense forward over %d x %d tokens (cache miss, storing as %s)", *windows.shape, key[:16])
        hidden, s = dense_pass(model, windows)
        return {"windows": windows.cpu(), **dict(zip(names, hidden))}, {"dense_forward_s": s}

    def check(tensors: dict, meta: dict) -> str | None:
        if set(tensors) != {"windows", *names}:
            return "tensor names differ from the expected windows"
        if not torch.equal(tensors["windows"], windows.cpu()):
            return "token ids of the stored windows differ from this job's windows"
        if any(tensors[k].shape[0] != windows.shape[1] for k in names):
            return "hidden-state lengths differ from ctx"
        return None

    t = time.perf_counter()
    tensors, meta, hit = store.get_or_create(key, inputs, compute, check)
    dense_s = float(meta["facts"]["dense_forward_s"])
    status.update(dense="hit" if hit else "miss", dense_key=key,
                  dense_cache_s=time.perf_counter() - t - (0.0 if hit else dense_s))
    if hit:
        log.info("dense hidden states from the cache (%s), dense forward skipped", store.path(key))
    return [tensors[k] for k in names], dense_s


def _compress(cfg: DictConfig, comp, model, calib, device, dtype, store, status: dict) -> tuple[dict, float]:
    """Compress ``model`` in place (or load its compressed weights from the cache): (facts, compress time).
    ``store`` is None unless the cache settings send this compressor's weights through the cache."""
    from lcc.cache import key_of, pack_bits, unpack_bits
    from lcc.compressors.base import target_linears

    torch.manual_seed(cfg.seed)  # compress() sees the same RNG state whether or not the dense pass ran
    if store is None:
        log.info("compressing with %s (%s)", comp.name, comp.level())
        t = time.perf_counter()
        info = comp.compress(model, calib) or {}
        return info, time.perf_counter() - t

    lins: dict[str, torch.nn.Linear] = {}  # every Linear the compressor (or any stage of a composition) may change
    for c in [comp, *getattr(comp, "instances", [])]:
        lins.update(target_linears(model, c.targets))

    masks = bool(getattr(comp, "zeroes_only", False))
    if masks:  # one bit per weight (kept or zeroed), applied to the freshly loaded dense weights on a hit
        expected = {f"{n}.weight.keep": (torch.Size([(lin.weight.numel() + 7) // 8]), torch.uint8)
                    for n, lin in lins.items()}

        def encode() -> dict[str, torch.Tensor]:
            return {f"{n}.weight.keep": pack_bits(lin.weight.detach() != 0) for n, lin in lins.items()}

        def apply(tensors: dict[str, torch.Tensor]) -> None:
            for n, lin in lins.items():
                w = lin.weight.data
                # w * True == w, w * False == ±0 (the sign of a zero changes no sum); 4x faster than masked_fill_
                w.mul_(unpack_bits(tensors[f"{n}.weight.keep"], w.shape, w.device))
    else:  # the compressed parameters themselves
        def params() -> dict[str, torch.nn.Parameter]:
            return {f"{n}.{p}": param for n, lin in lins.items()
                    for p, param in lin.named_parameters(recurse=False)}

        expected = {k: (p.shape, p.dtype) for k, p in params().items()}

        def encode() -> dict[str, torch.Tensor]:
            return {k: p.detach() for k, p in params().items()}

        def apply(tensors: dict[str, torch.Tensor]) -> None:
            ps = params()
            for k, v in tensors.items():
                ps[k].data.copy_(v.to(ps[k].device))

    inputs = compressed_cache_inputs(cfg, comp, model, calib, device, dtype)
    inputs["encoding"] = "keep_bits" if masks else "weights"
    key = key_of(inputs)

    def compute():
        log.info("compressing with %s (%s) (cache miss, storing as %s)", comp.name, comp.level(), key[:16])
        t = time.perf_counter()
        info = comp.compress(model, calib) or {}
        s = time.perf_counter() - t
        info = json.loads(json.dumps(info, default=str))  # as a cache hit would return it
        return encode(), {"compress_info": info, "compress_s": s}

    def check(tensors: dict, meta: dict) -> str | None:
        if set(tensors) != set(expected):
            return "stored tensor names differ from the compressor's target layers"
        bad = [k for k, v in tensors.items() if (v.shape, v.dtype) != expected[k]]
        return f"shape/dtype differ for {bad[:3]}" if bad else None

    t = time.perf_counter()
    tensors, meta, hit = store.get_or_create(key, inputs, compute, check)
    facts = meta["facts"]
    if hit:
        with torch.no_grad():
            apply(tensors)
        log.info("compressed weights of %s (%s) from the cache (%s), compression skipped",
                 comp.name, comp.level(), store.path(key))
    status.update(compressed="hit" if hit else "miss", compressed_key=key,
                  compress_cache_s=time.perf_counter() - t - (0.0 if hit else facts["compress_s"]))
    return facts["compress_info"], float(facts["compress_s"])


def _evaluate(cfg: DictConfig, out: Path) -> dict:
    from lcc.cache import TensorStore, settings
    from lcc.data import eval_windows
    from lcc.evaluate import compressed_pass, logits_fn
    from lcc.metrics import summarize
    from lcc.models import load_model, resolve_device, resolve_dtype

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    comp = compressors.build(cfg.compressor)
    cs = settings(cfg)
    cache: dict[str, Any] = {"dense": "off", "compressed": "off"}
    dense_store = TensorStore(cs.dir, "dense") if cs.enabled and cs.dense else None
    comp_store = TensorStore(cs.dir, "compressed") if cs.cache_compressed(comp) else None
    if cs.enabled and cs.compressed is not False and comp_store is None:  # why compression skips the cache
        cache["compressed"] = "uncacheable" if not getattr(comp, "cacheable", False) else "recomputed"
    if dense_store or comp_store:
        cache["dir"] = str(cs.dir)
    model, tok, max_ctx = load_model(cfg.model, device, dtype)
    ctx = cfg.ctx.tokens
    check_context(cfg, max_ctx)  # again with the loaded model's own length (hf models may leave it null)
    timings["load_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    windows = eval_windows(cfg.data, tok, ctx, cfg.n_docs, cfg.seed)
    calib = None
    if getattr(comp, "needs_calibration", comp.calibrated):
        from lcc.compressors.engine import calibration_batch
        calib = calibration_batch(cfg.calib, tok)
    timings["data_s"] = time.perf_counter() - t

    if comp.uses_targets:  # a target set that selects nothing is an error, not a dense "compressed" result
        comp.check_targets(model)
    dense_hidden, timings["dense_forward_s"] = _dense_hidden(cfg, model, windows, device, dtype, dense_store,
                                                             cache)
    # the dense head comes from the freshly loaded (still dense) model, so a dense cache hit needs no copy of it
    head = model.get_output_embeddings()
    dense_w = head.weight.detach().clone() if comp.targets.lm_head else None
    dense_head = logits_fn(model, dense_w)

    before = _fingerprints(model, comp)
    info, timings["compress_s"] = _compress(cfg, comp, model, calib, device, dtype, comp_store, cache)
    weights = _changed(model, comp, before)
    for k in ("dense_cache_s", "compress_cache_s"):
        if k in cache:
            timings[k] = cache.pop(k)

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
            "level": comp.level(), "compress_info": info, "weights": weights, "summary": summary, "curve": curve,
            "timings": timings, "files": RESULT_FILES, "checksums": file_records(out, RESULT_FILES), "cache": cache}


def _targeted(model, comp) -> dict[str, torch.nn.Module]:
    from lcc.compressors.base import target_linears

    lins: dict[str, torch.nn.Module] = {}
    for c in getattr(comp, "instances", None) or [comp]:  # a composition: the union of its stages' targets
        if c.uses_targets:
            lins.update(target_linears(model, c.targets))
    return lins


def _fingerprints(model, comp) -> dict[str, int]:
    from lcc.compressors.base import weight_fingerprint

    return {n: weight_fingerprint(m) for n, m in _targeted(model, comp).items()}


def _changed(model, comp, before: dict[str, int]) -> dict[str, int]:
    """How many targeted Linear layers ``compress`` changed. A compressor that changed no weight and acts on
    nothing at run time (no hooks, no attention function) left the dense model: that is an error, never a
    result that looks compressed (e.g. sparsity=0, or a grid every weight already lies on)."""
    from lcc.compressors.base import weight_fingerprint

    lins = _targeted(model, comp)
    changed = sum(weight_fingerprint(m) != before.get(n) for n, m in lins.items())
    if comp.uses_targets and changed == 0 and not comp.acts_at_runtime:
        raise ConfigError(f"compressor {comp.name} ({comp.level()}) changed no weight of its {len(lins)} targeted "
                          f"Linear layers: the model is still the dense one. Use compressor=none for the dense "
                          f"baseline, or a level that compresses")
    return {"targeted_linears": len(lins), "changed_linears": changed}
