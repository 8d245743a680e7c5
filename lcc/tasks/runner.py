"""A job with a synthetic task (passkey, niah, vt): prompts -> dense scores (cached) -> compress in place ->
compressed scores -> per-prompt rows (samples.parquet) and the summary of ``lcc.tasks.base.TASK_METRICS``.

The same conventions as a KL job (lcc/job.py): one model copy (the dense model is scored first, then
compressed in place), the shared dense cache (the dense scores of a (model, task, ctx, seed) are computed once
and reused by every compressor of a sweep), the compressed-weights cache, and result.json written last by
``lcc.job.run``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from lcc import compressors
from lcc.io import file_records, write_parquet
from lcc.tasks.base import summarize
from lcc.tasks.score import Scored, eos_ids, matches, score_all
from lcc.tasks.synthetic import Sample, SyntheticTask

log = logging.getLogger(__name__)


def _prompts_sha(samples: list[Sample]) -> str:
    from lcc.job import _tokens_sha256
    return _tokens_sha256(torch.cat([t for s in samples for t in (s.prompt, s.answer)]))


def dense_cache_inputs(cfg: DictConfig, task: SyntheticTask, model, samples, device, dtype, eos) -> dict:
    """Everything the dense scores depend on (their cache key is its sha256)."""
    from lcc.cache import FORMAT, source_fingerprint
    from lcc.job import _cache_versions, _device_id, _model_identity

    return {"entry": "task_dense", "format": FORMAT, "model": _model_identity(cfg, model),
            "task": OmegaConf.to_container(cfg.task, resolve=True), "ctx": int(cfg.ctx.tokens),
            "seed": int(cfg.seed), "prompts_sha256": _prompts_sha(samples), "eos": sorted(eos),
            "dtype": str(dtype), "device": _device_id(device), "versions": _cache_versions(),
            "code": source_fingerprint("models.py", "evaluate.py", "tasks/score.py")}


def _dense_scores(cfg, task, model, head, samples, eos, decode, device, dtype, store, status
                  ) -> tuple[list[Scored], float]:
    run = lambda: score_all(model, head, samples, task.max_new_tokens, eos, decode, "dense prompts")  # noqa: E731
    if store is None:
        t = time.perf_counter()
        scored = run()
        return scored, time.perf_counter() - t
    from lcc.cache import key_of

    inputs = dense_cache_inputs(cfg, task, model, samples, device, dtype, eos)
    key = key_of(inputs)
    n = len(samples)

    def compute():
        log.info("dense scoring of %d prompts (cache miss, storing as %s)", n, key[:16])
        t = time.perf_counter()
        sc = run()
        s = time.perf_counter() - t
        tensors = {}
        for i, x in enumerate(sc):
            tensors[f"hidden.{i:05d}"] = x.hidden
            tensors[f"generated.{i:05d}"] = torch.tensor(x.generated, dtype=torch.long)
            tensors[f"seconds.{i:05d}"] = torch.tensor([x.seconds], dtype=torch.float64)
        return tensors, {"dense_score_s": s}

    def check(tensors: dict, meta: dict) -> str | None:
        want = {f"{k}.{i:05d}" for i in range(n) for k in ("hidden", "generated", "seconds")}
        if set(tensors) != want:
            return "tensor names differ from this job's prompts"
        if any(tensors[f"hidden.{i:05d}"].shape[0] != samples[i].answer.numel() for i in range(n)):
            return "answer lengths differ from this job's prompts"
        return None

    t = time.perf_counter()
    tensors, meta, hit = store.get_or_create(key, inputs, compute, check)
    s = float(meta["facts"]["dense_score_s"])
    status.update(dense="hit" if hit else "miss", dense_key=key,
                  dense_cache_s=time.perf_counter() - t - (0.0 if hit else s))
    if hit:
        log.info("dense scores of %d prompts from the cache (%s)", n, store.path(key))
    return [Scored(hidden=tensors[f"hidden.{i:05d}"], generated=tensors[f"generated.{i:05d}"].tolist(),
                   seconds=float(tensors[f"seconds.{i:05d}"][0])) for i in range(n)], s


def rows(samples: list[Sample], dense: list[Scored], comp: list[Scored], dense_head, comp_head, decode
         ) -> pd.DataFrame:
    """One row per prompt: outputs, correctness, answer NLL and KL at the answer positions."""
    from lcc.metrics import chunked_token_metrics

    out = []
    for s, d, c in zip(samples, dense, comp):
        with torch.inference_mode():
            m = chunked_token_metrics(d.hidden, c.hidden, dense_head, comp_head,
                                      s.answer.to(c.hidden.device), chunk_size=1024)
        dt, ct = decode(d.generated), decode(c.generated)
        ad, ac = float(matches(dt, s.expected)), float(matches(ct, s.expected))
        out.append({"depth": s.depth, "index": s.index, "prompt_tokens": s.prompt.numel(),
                    "needle_pos": s.needle_pos, "needle_depth": s.needle_pos / s.prompt.numel(),
                    "answer": s.answer_text, "expected": "|".join(s.expected), "answer_tokens": s.answer.numel(),
                    "output_dense": dt, "output_compressed": ct,
                    "acc_dense": ad, "acc_compressed": ac, "acc_delta": ac - ad,
                    "nll_dense": m["nll_p"].mean().item(), "nll_compressed": m["nll_q"].mean().item(),
                    "kl_answer": m["kl"].mean().item(), "top1_answer": m["agree"].mean().item(),
                    "seconds_dense": d.seconds, "seconds_compressed": c.seconds})
    return pd.DataFrame(out)


def evaluate(cfg: DictConfig, out: Path, task: SyntheticTask) -> dict[str, Any]:
    from lcc.cache import TensorStore, settings
    from lcc.evaluate import logits_fn
    from lcc.job import _compress, check_context
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
    if cs.enabled and cs.compressed is not False and comp_store is None:
        cache["compressed"] = "uncacheable" if not getattr(comp, "cacheable", False) else "recomputed"
    if dense_store or comp_store:
        cache["dir"] = str(cs.dir)
    model, tok, max_ctx = load_model(cfg.model, device, dtype)
    ctx = int(cfg.ctx.tokens)
    check_context(cfg, max_ctx)
    timings["load_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    samples = task.samples(tok, ctx, int(cfg.seed), cfg.data)
    calib = None
    if getattr(comp, "needs_calibration", comp.calibrated):
        from lcc.compressors.engine import calibration_batch
        calib = calibration_batch(cfg.calib, tok)
    timings["data_s"] = time.perf_counter() - t
    log.info("task %s: %d prompts of %d tokens (%d depths x %d)", task.name, len(samples), ctx,
             len(task.depths), task.n_samples)

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    eos = eos_ids(model, tok)
    head = model.get_output_embeddings()
    dense_w = head.weight.detach().clone() if comp.targets.lm_head else None
    dense_head = logits_fn(model, dense_w)
    dense, timings["dense_score_s"] = _dense_scores(cfg, task, model, dense_head, samples, eos, decode, device,
                                                    dtype, dense_store, cache)
    info, timings["compress_s"] = _compress(cfg, comp, model, calib, device, dtype, comp_store, cache)
    for k in ("dense_cache_s", "compress_cache_s"):
        if k in cache:
            timings[k] = cache.pop(k)
    comp_head = logits_fn(model)
    t = time.perf_counter()
    scored = score_all(model, comp_head, samples, task.max_new_tokens, eos, decode, "compressed prompts")
    timings["compressed_score_s"] = time.perf_counter() - t
    timings["compressed_s_per_prompt"] = timings["compressed_score_s"] / len(samples)
    df = rows(samples, dense, scored, dense_head, comp_head, decode)
    write_parquet(out / "samples.parquet", df)
    summary, by_depth = summarize(df)
    timings["total_s"] = time.perf_counter() - t0
    return {"model": cfg.model.name, "data": cfg.data.name, "ctx": ctx, "task": task.name,
            "task_params": task.params(), "compressor": comp.name, "level": comp.level(), "compress_info": info,
            "summary": summary, "by_depth": by_depth, "timings": timings, "files": ["samples.parquet"],
            "checksums": file_records(out, ["samples.parquet"]), "cache": cache}
