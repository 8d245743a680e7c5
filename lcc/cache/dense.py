"""The dense reference: the dense model's final hidden states over a job's evaluation windows, stored once
per (model, data, ctx, n_docs, seed, dtype, device, versions, code) and reused by every compressor."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from lcc.cache.keys import device_id, library_versions, model_identity, source_fingerprint, tokens_sha256
from lcc.cache.store import FORMAT, TensorStore, key_of

log = logging.getLogger(__name__)


@dataclass
class DenseReference:
    """The dense step's result."""

    hidden: list[torch.Tensor]  # final hidden states [ctx, hidden] per window
    forward_s: float  # the dense forward's time (the original one on a cache hit)
    status: str = "off"  # off | hit | miss
    key: str | None = None
    cache_s: float | None = None  # time spent in the cache (check, read or write), forward excluded


class DenseCache:
    """One entry of dense hidden states: the windows' token ids (checked on every read) and ``hidden.NNNN``."""

    def __init__(self, store: TensorStore, inputs: dict):
        self.store, self.inputs, self.key = store, inputs, key_of(inputs)

    @classmethod
    def for_job(cls, root: Path, cfg: Any, model, windows: torch.Tensor, device: torch.device,
                dtype: torch.dtype) -> "DenseCache":
        """Everything the dense hidden states of a job depend on (the key is their sha256). The windows'
        token ids are in it, so a change of data/tokenizer code addresses another entry."""
        from lcc.evaluate import dense_pass, final_hidden, input_device

        inputs = {"entry": "dense_hidden", "format": FORMAT, "model": model_identity(cfg.model, model),
                  "data": OmegaConf.to_container(cfg.data, resolve=True), "ctx": int(cfg.ctx.tokens),
                  "n_docs": int(cfg.n_docs), "seed": int(cfg.seed), "windows_sha256": tokens_sha256(windows),
                  "dtype": str(dtype), "device": device_id(device), "versions": library_versions(),
                  "code": source_fingerprint("models.py", functions=(final_hidden, dense_pass, input_device))}
        return cls(TensorStore(root, "dense"), inputs)

    def get_or_compute(self, windows: torch.Tensor,
                       compute: Callable[[], tuple[list[torch.Tensor], float]]) -> DenseReference:
        """The entry's hidden states if a valid one exists, else ``compute()`` -> (hidden, forward seconds),
        stored."""
        names = [f"hidden.{i:04d}" for i in range(windows.shape[0])]

        def miss():
            log.info("dense forward over %d x %d tokens (cache miss, storing as %s)", *windows.shape, self.key[:16])
            hidden, s = compute()
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
        tensors, meta, hit = self.store.get_or_create(self.key, self.inputs, miss, check)
        forward_s = float(meta["facts"]["dense_forward_s"])
        cache_s = time.perf_counter() - t - (0.0 if hit else forward_s)
        if hit:
            log.info("dense hidden states from the cache (%s), dense forward skipped", self.store.path(self.key))
        return DenseReference([tensors[k] for k in names], forward_s, "hit" if hit else "miss", self.key, cache_s)
