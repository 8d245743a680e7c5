"""Fingerprinted: editing this file invalidates the cached dense lm-eval results.

``task=lm_eval``: any lm-evaluation-harness task (MMLU, TriviaQA, ... as LLM-KICK uses), run through lm-eval's
Python API on the in-memory model: first on the dense model, then, after the model is compressed in place, on
the compressed one. Reports both scores (with lm-eval's standard errors), their difference, and LLM-KICK's
"matching" verdict: the compressed score is within ``match_within`` (5 %) of the dense one,
|compressed - dense| <= match_within * |dense|.

Hub data sets (the real path for MMLU & co.) are fetched by lm-eval's ``datasets`` calls. Offline, a local task
works the same way: ``python -m lcc.tasks pydoc-task DIR`` writes a multiple-choice task over CPython's docs
(``lcc_pydoc_cloze``: a JSONL file and its YAML) that ``task.include_path=DIR task.tasks=[lcc_pydoc_cloze]``
runs. Needs the ``tasks`` extra (``pip install -e '.[tasks]'``, part of ``make venv``).
"""
from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from lcc import ConfigError
from lcc.io import write_parquet
from lcc.tasks import bridge
from lcc.checks import fraction, ints, optional, param
from lcc.tasks.base import Task
from lcc.tasks.prelaunch import check_lm_eval
from lcc.tasks.report import report as task_report

log = logging.getLogger(__name__)
INSTALL = "pip install -e '.[tasks]'   (or: make venv)"


@functools.lru_cache(maxsize=8)
def task_manager(include_path: str | None, metadata: str | None = None):
    """lm-eval's TaskManager (``metadata``: the JSON of the metadata every task gets, e.g. RULER's tokenizer
    and ``max_seq_lengths``)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ConfigError(f"task=lm_eval needs the package 'lm-eval', which is not installed ({e}). "
                          f"Install it with: {INSTALL}") from e
    meta = json.loads(metadata) if metadata else None
    return TaskManager(include_path=include_path, metadata=meta) if include_path else TaskManager(metadata=meta)


@dataclass
class LmEval(Task):
    name: ClassVar[str] = "lm_eval"
    family: ClassVar[str] = "lm_eval"
    reporter: ClassVar = staticmethod(task_report)
    tasks: list = param(default_factory=lambda: ["mmlu"], doc="lm-eval task or group names, e.g. [mmlu] or [triviaqa]")
    include_path: Any = param(None, "a folder of extra task YAMLs (local tasks), or null")
    num_fewshot: Any = param(None, "null: each task's default", optional(ints(0)))
    limit: Any = param(None, "documents per task (null: all)", optional(ints(1)))
    batch_size: int = param(1, "lm-eval's batch size", ints(1, 4096))
    max_length: Any = param(None, "null: ctx.tokens (inputs longer than this are truncated from the left)",
                            optional(ints(1)))
    apply_chat_template: bool = param(False, "lm-eval's apply_chat_template")
    bootstrap_iters: int = param(1000, "lm-eval's bootstrap for the standard errors of non-mean metrics", ints(0))
    match_within: float = param(0.05, "LLM-KICK's \"matching\": compressed within 5 % of the dense score", fraction())
    metadata: Any = param(None, "lm-eval task metadata (RULER gets the model's tokenizer and max_seq_lengths=[ctx] "
                                "by default)")

    def check(self) -> None:
        super().check()
        t = self.tasks
        if isinstance(t, str):
            self.tasks = t = [t]
        if not isinstance(t, (list, tuple)) or not t or not all(isinstance(x, str) and x for x in t):
            raise ConfigError(f"task.tasks={t!r} is invalid; valid: a non-empty list of lm-eval task names, "
                              f"e.g. task.tasks=[mmlu]")
        self.tasks = list(t)
        if self.include_path is not None:
            if not isinstance(self.include_path, str) or not Path(self.include_path).is_dir():
                raise ConfigError(f"task.include_path={self.include_path!r} is not a folder; valid: a folder of "
                                  f"lm-eval task YAMLs, or null")
        if self.metadata is not None and not isinstance(self.metadata, dict):
            raise ConfigError(f"task.metadata={self.metadata!r} is invalid; valid: null or a mapping of lm-eval "
                              f"task metadata, e.g. {{max_seq_lengths: [4096]}}")

    def check_job(self, cfg: Any) -> None:
        """A Hugging Face tokenizer; unknown task names fail before launch, with the closest known names."""
        check_lm_eval(cfg)
        known = set(task_manager(self.include_path).all_tasks)
        bad = [t for t in self.tasks if t not in known]
        if bad:
            hints = {t: difflib.get_close_matches(t, known, n=3) for t in bad}
            raise ConfigError(f"task.tasks: unknown lm-eval task(s) {bad}; closest known: {hints} "
                              f"(all: `lm_eval ls tasks`; local tasks need task.include_path)")
        bridge.check_ruler(self, cfg, task_manager(self.include_path))
        bridge.check_press(self, cfg, task_manager(self.include_path))

    # ---- the job (lcc.context.JobContext) --------------------------------------------------------------
    def prepare(self, job: Any) -> None:
        tok = job.tokenizer
        if not hasattr(tok, "apply_chat_template"):
            raise ConfigError(f"task=lm_eval needs a Hugging Face tokenizer; model={job.cfg.model.name} has "
                              f"{type(tok).__name__}")

    def probe_ids(self, job: Any) -> torch.Tensor:
        return _probe_ids(job.tokenizer)  # e.g. a checkpoint's tokenizer: before any evaluation

    def run(self, job: Any) -> dict[str, Any]:
        return run_lm_eval(job, self)


def _metric_rows(res: dict) -> dict[tuple[str, str], tuple[float, float | None]]:
    """{(task, metric): (value, stderr)} from lm-eval's ``results`` (keys "<metric>,<filter>")."""
    out = {}
    for tname, r in res["results"].items():
        for k, v in r.items():
            if "," not in k or "_stderr" in k or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            metric, filt = k.split(",", 1)
            se = r.get(f"{metric}_stderr,{filt}")
            out[(tname, k)] = (float(v), float(se) if isinstance(se, (int, float)) and math.isfinite(se) else None)
    return out


def _sample_frame(res: dict, which: str) -> pd.DataFrame:
    rows = []
    for tname, samples in (res.get("samples") or {}).items():
        for s in samples:
            row = {"lm_task": tname, "doc_id": s.get("doc_id"), "filter": s.get("filter"),
                   # the model's outputs: generated text, or (log-likelihood, is_greedy) per choice, as JSON
                   f"output_{which}": json.dumps(s.get("filtered_resps"), default=str)}
            for m in s.get("metrics", []):
                v = s.get(m)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[f"{m}_{which}"] = float(v)
                elif isinstance(v, bool):
                    row[f"{m}_{which}"] = float(v)
            rows.append(row)
    return pd.DataFrame(rows)


def _run(task: LmEval, model, tok, max_length: int, seed: int, metadata: dict | None = None) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=task.batch_size, max_length=max_length,
              device=str(next(model.parameters()).device))
    meta = json.dumps(metadata, sort_keys=True) if metadata else None
    return simple_evaluate(model=lm, tasks=list(task.tasks), num_fewshot=task.num_fewshot, limit=task.limit,
                           task_manager=task_manager(task.include_path, meta), log_samples=True,
                           bootstrap_iters=task.bootstrap_iters, apply_chat_template=task.apply_chat_template,
                           random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                           fewshot_random_seed=seed)


def run_lm_eval(job, task: LmEval) -> dict[str, Any]:
    """The body of an lm_eval result, on the job context (lcc.context): lm-eval on the dense model (through the
    shared dense cache, lcc.tasks.bridge: k compressors of a sweep cost k + 1 evaluations), compress in place,
    lm-eval on the compressed model; the rows of both scores per task and metric."""
    cfg, m = job.cfg, job.loaded
    model, tok = m.model, m.tokenizer
    ctx = job.ctx
    max_length = int(task.max_length or ctx)
    ruler = bridge.ruler_tasks(task_manager(task.include_path), task.tasks)
    meta = bridge.task_metadata(task, bool(ruler), tok, ctx)

    def run_lm():
        try:
            return _run(task, model, tok, max_length, int(cfg.seed), meta)
        except Exception as e:  # a RULER task whose hub data is unreachable: say which and what runs offline
            if (clear := bridge.hub_failure(ruler, e)):
                raise clear from e
            raise

    timings = job.timings
    entry = job.caches.dense_entry(
        lambda: bridge.dense_inputs(cfg, task, model, meta, m.device, m.dtype, _version()))
    if entry is not None:
        dense, timings["dense_eval_s"], hit, cache_s = bridge.dense_results(entry, run_lm)
        job.dense_cached("hit" if hit else "miss", entry.key, cache_s)
    else:
        t = time.perf_counter()
        dense = bridge._slim(run_lm())
        timings["dense_eval_s"] = time.perf_counter() - t
    job.compress()
    t = time.perf_counter()
    with bridge.press_generation(model):  # a KV-eviction press compresses each prompt's cache once, after reading it
        compd = bridge._slim(run_lm())
    timings["compressed_eval_s"] = time.perf_counter() - t

    md, mc = _metric_rows(dense), _metric_rows(compd)
    rows = []
    for key in md:
        if key not in mc:
            continue
        (d, dse), (c, cse) = md[key], mc[key]
        rows.append({"lm_task": key[0], "metric": key[1], "dense": d, "dense_se": dse, "compressed": c,
                     "compressed_se": cse, "delta": c - d, "rel_delta": (c - d) / abs(d) if d else None,
                     "matching": bool(abs(c - d) <= task.match_within * abs(d))})
    rows = bridge.drop_unmeasured(rows, ruler)
    if not rows:
        raise RuntimeError(f"lm-eval returned no numeric metric for {task.tasks}")
    bridge.same_prompts(dense, compd)
    sd, sc = _sample_frame(dense, "dense"), _sample_frame(compd, "compressed")
    files = []
    samples = pd.DataFrame()
    if not sd.empty and not sc.empty:
        samples = sd.merge(sc, on=["lm_task", "doc_id", "filter"], how="outer")
        write_parquet(job.out / "samples.parquet", samples)
        files.append("samples.parquet")
    first = rows[0]
    summary = {"score_dense": first["dense"], "score_dense_se": first["dense_se"],
               "score_compressed": first["compressed"], "score_compressed_se": first["compressed_se"],
               "score_delta": first["delta"], "matching": first["matching"],
               "primary": f"{first['lm_task']}/{first['metric']}",
               "n_docs": int(sum(len(v) for v in (dense.get("samples") or {}).values()))}
    result = {}
    if ruler:  # RULER's score at the job's length, per task: an accuracy beside passkey / niah in reduce
        result["ruler"] = bridge.ruler_rows(rows, ruler, bridge.ruler_lengths(task.metadata, ctx), samples)
    return {"data": "lm_eval", "summary": summary, "lm_eval": rows, **result, "files": files,
            "lm_eval_versions": {"lm_eval": _version()}}


def _probe_ids(tok) -> torch.Tensor:
    """Token ids of a stretch of CPython's docs (offline): what a compressor checks a tokenizer against."""
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics)[:40])
    return torch.tensor(tok(text)["input_ids"][:4096])


def _version() -> str:
    from importlib.metadata import version
    return version("lm_eval")


# ---- an offline task made from CPython's docs --------------------------------------------------------
TASK_NAME = "lcc_pydoc_cloze"
YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {jsonl}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def make_pydoc_task(folder: str | Path, n_docs: int = 200, seed: int = 0) -> Path:
    """Write ``lcc_pydoc_cloze``: each document is a sentence of CPython's docs without its last word, and the
    choices are that word and three other words of the docs (multiple choice, metric acc). Returns the folder
    (pass it as ``task.include_path``)."""
    import re

    import pydoc_data.topics as topics

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    sents = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    sents = [s for s in sents if 8 <= len(s.split()) <= 40 and re.fullmatch(r"[A-Za-z][A-Za-z ,'\-]*[a-z]\.", s)]
    vocab = sorted({w for s in sents for w in re.findall(r"[a-z]{4,}", s)})
    docs = []
    for i in rng.permutation(len(sents))[:n_docs]:
        words = sents[i][:-1].split()
        answer = words[-1]
        others = [w for w in rng.choice(vocab, 12, replace=False) if w != answer][:3]
        choices = [answer] + others
        order = rng.permutation(4)
        docs.append({"context": " ".join(words[:-1]), "choices": [choices[j] for j in order],
                     "label": int(np.where(order == 0)[0][0])})
    jsonl = folder / f"{TASK_NAME}.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{TASK_NAME}.yaml").write_text(YAML.format(name=TASK_NAME, jsonl=jsonl.resolve()))
    return folder
