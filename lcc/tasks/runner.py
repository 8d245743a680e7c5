"""A job with a synthetic task (passkey, niah, vt): prompts -> dense scores (cached) -> compress in place ->
compressed scores -> per-prompt rows (samples.parquet) and the summary of the registry's ``synthetic`` metrics
(lcc.metrics.registry).

The same conventions as a KL job (lcc/tasks/kl.py, on the same job context, lcc/context.py): one model copy (the
dense model is scored first, then compressed in place), the shared dense cache (the dense scores of a (model,
task, ctx, seed) are computed once and reused by every compressor of a sweep, through lcc/cache/dense.py), the
compressed-weights cache, and result.json written last by ``lcc.job.run``.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from lcc.cache import dense_inputs, source_fingerprint
from lcc.cache.keys import tokens_sha256
from lcc.forward import logits_fn
from lcc.io import write_parquet
from lcc.metrics import chunked_token_metrics
from lcc.metrics.summary import prompt_summary
from lcc.tasks.score import Scored, eos_ids, matches, score_all

if TYPE_CHECKING:  # the synthetic task calls run_synthetic
    from lcc.tasks.synthetic import Sample, SyntheticTask

log = logging.getLogger(__name__)


def _prompts_sha(samples: list[Sample]) -> str:
    return tokens_sha256(torch.cat([t for s in samples for t in (s.prompt, s.answer)]))


def dense_cache_inputs(cfg: DictConfig, task: SyntheticTask, model, samples, device, dtype, eos) -> dict:
    """Everything the dense scores depend on (their cache key is its sha256)."""
    return dense_inputs("task_dense", cfg, model, device, dtype,
                        source_fingerprint("models.py", "forward.py", "tasks/score.py"),
                        task=OmegaConf.to_container(cfg.task, resolve=True), ctx=int(cfg.ctx.tokens),
                        seed=int(cfg.seed), prompts_sha256=_prompts_sha(samples), eos=sorted(eos))


def _dense_scores(job, task, head, samples, eos, decode) -> tuple[list[Scored], float]:
    """The dense model's scores of every prompt, through the dense cache (lcc.cache.dense) where it is on."""
    m = job.loaded
    run = lambda: score_all(m.model, head, samples, task.decode_budget, eos, decode, "dense prompts")  # noqa: E731
    entry = job.caches.dense_entry(lambda: dense_cache_inputs(job.cfg, task, m.model, samples, m.device, m.dtype,
                                                              eos))
    if entry is None:
        t = time.perf_counter()
        scored = run()
        return scored, time.perf_counter() - t
    n = len(samples)

    def compute():
        t = time.perf_counter()
        sc = run()
        s = time.perf_counter() - t
        tensors = {}
        for i, x in enumerate(sc):
            tensors[f"hidden.{i:05d}"] = x.hidden
            tensors[f"generated.{i:05d}"] = torch.tensor(x.generated, dtype=torch.long)
            tensors[f"seconds.{i:05d}"] = torch.tensor([x.seconds], dtype=torch.float64)
        return tensors, s

    def check(tensors: dict, meta: dict) -> str | None:
        want = {f"{k}.{i:05d}" for i in range(n) for k in ("hidden", "generated", "seconds")}
        if set(tensors) != want:
            return "tensor names differ from this job's prompts"
        if any(tensors[f"hidden.{i:05d}"].shape[0] != samples[i].answer.numel() for i in range(n)):
            return "answer lengths differ from this job's prompts"
        return None

    tensors, s, hit, cache_s = entry.get_or_compute(f"dense scores of {n} prompts", "dense_score_s", compute, check)
    job.dense_cached("hit" if hit else "miss", entry.key, cache_s)
    return [Scored(hidden=tensors[f"hidden.{i:05d}"], generated=tensors[f"generated.{i:05d}"].tolist(),
                   seconds=float(tensors[f"seconds.{i:05d}"][0])) for i in range(n)], s


def rows(samples: list[Sample], dense: list[Scored], comp: list[Scored], dense_head, comp_head, decode
         ) -> pd.DataFrame:
    """One row per prompt: outputs, correctness, answer NLL and KL at the answer positions."""
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


def run_synthetic(job, task: SyntheticTask) -> dict[str, Any]:
    """The body of a synthetic task's result, on the job context (lcc.context): dense scores (cached), compress
    in place, compressed scores, per-prompt rows and their summary."""
    m, samples = job.loaded, job.inputs

    def decode(ids: list[int]) -> str:
        return m.tokenizer.decode(ids, skip_special_tokens=True)

    eos = eos_ids(m.model, m.tokenizer)
    head_d = job.dense_head()  # before compression: the dense output head
    dense, dense_s = _dense_scores(job, task, head_d, samples, eos, decode)
    job.compress()
    store = job.caches.press_prefill_store(job.cfg, job.comp, m.model, m.device, m.dtype)
    if store is not None:  # a replayable press alone: each prompt's prefill recorded once, replayed at other ratios
        job.comp.prefill_store = store
    head_c = logits_fn(m.model)
    t = time.perf_counter()
    scored = score_all(m.model, head_c, samples, task.decode_budget, eos, decode, "compressed prompts")
    comp_s = time.perf_counter() - t
    if store is not None:
        job.comp.prefill_store = None
        job.cache.update(store.report())
    df = rows(samples, dense, scored, head_d, head_c, decode)
    write_parquet(job.out / "samples.parquet", df)
    summary, by_depth = prompt_summary(df, "synthetic")
    job.timings.update(dense_score_s=dense_s, compressed_score_s=comp_s,
                       compressed_s_per_prompt=comp_s / len(samples))
    return {"summary": summary, "by_depth": by_depth, "files": ["samples.parquet"]}
