"""``task=kl`` (the default): per-position KL(P_dense || Q), NLL and top-1 agreement on text windows
(docs/metrics.md). The recipe: windows -> dense step -> compress -> compare step (the compressed pass, token by
token against the dense hidden states) -> summarize -> write. Each step is a small function returning a small
result object; ``bench/gpu.py`` times the same steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from lcc.cache import DenseCache, DenseReference
from lcc.data import eval_windows
from lcc import forward
from lcc.io import write_parquet, write_safetensors
from lcc.metrics import position_table, registry, summarize
from lcc.tasks.base import Task

#: the files of a finished KL job besides result.json; their sizes and checksums are recorded in result.json
RESULT_FILES = ["tokens.safetensors", "curve.parquet"]


@dataclass
class KL(Task):
    name: ClassVar[str] = "kl"
    family: ClassVar[str] = "kl"
    #: the default task: a config whose task node is just ``{name: kl}`` hashes as one from before the task
    #: group existed (lcc.job.config_hash), so its finished results stay valid
    implicit: ClassVar[bool] = True

    def prepare(self, job) -> torch.Tensor:
        """The evaluation windows [n_docs, ctx] of the ``data`` source."""
        cfg = job.cfg
        return eval_windows(cfg.data, job.tokenizer, cfg.ctx.tokens, cfg.n_docs, cfg.seed)

    def probe_ids(self, job) -> torch.Tensor:
        return job.inputs

    def run(self, job) -> dict[str, Any]:
        cfg, m, windows = job.cfg, job.loaded, job.inputs
        dense = dense_step(m.model, windows, job.caches.dense_cache(cfg, m.model, windows, m.device, m.dtype))
        job.dense_cached(dense.status, dense.key, dense.cache_s)
        head = job.dense_head()  # before compression: the dense output head
        job.compress()
        compared = compare_step(m.model, windows, dense.hidden, head, cfg.chunk_size)
        summary, curve = summarize(compared.arrays)
        files = write_step(job.out, compared)
        job.timings.update(dense_forward_s=dense.forward_s, compressed_forward_s=compared.forward_s,
                           metrics_s=compared.metrics_s)
        return {"summary": summary, "curve": curve, "files": files}

    @classmethod
    def done_line(cls, result: dict) -> str:
        line = registry.log_line(result["summary"], cls.family)
        return f"{result['compressor']} {result['level']} ctx={result['ctx']}  {line}"


# ---- the steps ------------------------------------------------------------------------------------------
def dense_step(model, windows: torch.Tensor, cache: DenseCache | None = None, keep_on: str = "auto"
               ) -> DenseReference:
    """The dense model's final hidden states per window (from the cache when it holds them)."""
    def compute():
        return forward.dense_pass(model, windows, keep_on)
    return cache.get_or_compute(windows, compute) if cache else DenseReference(*compute())


@dataclass
class Compared:
    per_token: dict[str, torch.Tensor]  # kl, nll_p, nll_q, agree: [n_docs, ctx - 1] float32
    forward_s: float
    metrics_s: float

    @property
    def arrays(self) -> dict:
        return {k: v.numpy() for k, v in self.per_token.items()}


def compare_step(model, windows: torch.Tensor, dense_hidden: list[torch.Tensor], dense_head_fn,
                    chunk_size: int) -> Compared:
    """The compressed model over every window, compared token by token with the dense hidden states."""
    per_tok, tm = forward.compressed_pass(model, windows, dense_hidden, dense_head_fn, chunk_size)
    return Compared(per_tok, tm["compressed_forward_s"], tm["metrics_s"])


def write_step(out: Path, compared: Compared) -> list[str]:
    """tokens.safetensors (per document and position) and curve.parquet (per position); their names."""
    write_safetensors(out / "tokens.safetensors", compared.per_token,
                      metadata={"rows": "documents", "cols": "positions 1.."})
    write_parquet(out / "curve.parquet", position_table(compared.arrays))
    return RESULT_FILES
