"""The dense references of every task, in one place: what a task computes from the dense model (KL: the final
hidden states over its windows; passkey/niah/vt: the scored prompts; lm_eval: lm-eval's results), stored once
per everything it depends on and reused by every compressor of a sweep. One code path (``DenseEntry``): the
key is the sha256 of the task's ``inputs`` (``dense_inputs``: model identity, dtype, device, versions, code,
and the task's own part), the entry's tensors are checked on every read.
"""
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
from lcc.forward import dense_pass, final_hidden, input_device

log = logging.getLogger(__name__)


def dense_inputs(entry: str, cfg: Any, model, device: torch.device, dtype: torch.dtype, code: str,
                 versions: dict | None = None, **own: Any) -> dict:
    """Everything a dense reference depends on (its key is their sha256): the entry's kind, the model's
    identity, dtype, device, library versions, the code that computes it, and the task's ``own`` part."""
    return {"entry": entry, "format": FORMAT, "model": model_identity(cfg.model, model), **own,
            "dtype": str(dtype), "device": device_id(device), "versions": versions or library_versions(),
            "code": code}


@dataclass
class DenseEntry:
    """One dense reference in the ``dense`` store, of any task."""

    store: TensorStore
    inputs: dict

    @property
    def key(self) -> str:
        return key_of(self.inputs)

    @classmethod
    def at(cls, root: Path, inputs: dict) -> "DenseEntry":
        return cls(TensorStore(root, "dense"), inputs)

    def get_or_compute(self, what: str, seconds_key: str, compute: Callable[[], tuple[dict, float]],
                       check: Callable[[dict, dict], str | None]) -> tuple[dict, float, bool, float]:
        """``(tensors, seconds, hit, cache_s)``: the entry's tensors if a valid one exists, else ``compute()`` ->
        (tensors, seconds of the dense work), stored with those seconds under ``seconds_key``; ``cache_s``:
        the time spent in the cache, the dense work excluded."""
        key = self.key

        def miss():
            log.info("%s (cache miss, storing as %s)", what, key[:16])
            tensors, s = compute()
            return tensors, {seconds_key: s}

        t = time.perf_counter()
        tensors, meta, hit = self.store.get_or_create(key, self.inputs, miss, check)
        seconds = float(meta["facts"][seconds_key])
        cache_s = time.perf_counter() - t - (0.0 if hit else seconds)
        if hit:
            log.info("%s from the cache (%s)", what, self.store.path(key))
        return tensors, seconds, hit, cache_s


@dataclass
class DenseReference:
    """The KL dense step's result."""

    hidden: list[torch.Tensor]  # final hidden states [ctx, hidden] per window
    forward_s: float  # the dense forward's time (the original one on a cache hit)
    status: str = "off"  # off | hit | miss
    key: str | None = None
    cache_s: float | None = None  # time spent in the cache (check, read or write), forward excluded


class DenseCache(DenseEntry):
    """The KL dense reference: the windows' token ids (checked on every read) and ``hidden.NNNN``."""

    def __init__(self, store: TensorStore, inputs: dict):
        super().__init__(store, inputs)

    @classmethod
    def for_job(cls, root: Path, cfg: Any, model, windows: torch.Tensor, device: torch.device,
                dtype: torch.dtype) -> "DenseCache":
        """Everything the dense hidden states of a job depend on (the key is their sha256). The windows'
        token ids are in it, so a change of data/tokenizer code addresses another entry."""
        inputs = dense_inputs("dense_hidden", cfg, model, device, dtype,
                              source_fingerprint("models.py", functions=(final_hidden, dense_pass, input_device)),
                              data=OmegaConf.to_container(cfg.data, resolve=True), ctx=int(cfg.ctx.tokens),
                              n_docs=int(cfg.n_docs), seed=int(cfg.seed), windows_sha256=tokens_sha256(windows))
        return cls(TensorStore(root, "dense"), inputs)

    def get_or_compute(self, windows: torch.Tensor,  # type: ignore[override]
                       compute: Callable[[], tuple[list[torch.Tensor], float]]) -> DenseReference:
        """The entry's hidden states if a valid one exists, else ``compute()`` -> (hidden, forward seconds),
        stored."""
        names = [f"hidden.{i:04d}" for i in range(windows.shape[0])]

        def tensors():
            hidden, s = compute()
            return {"windows": windows.cpu(), **dict(zip(names, hidden))}, s

        def check(tensors: dict, meta: dict) -> str | None:
            if set(tensors) != {"windows", *names}:
                return "tensor names differ from the expected windows"
            if not torch.equal(tensors["windows"], windows.cpu()):
                return "token ids of the stored windows differ from this job's windows"
            if any(tensors[k].shape[0] != windows.shape[1] for k in names):
                return "hidden-state lengths differ from ctx"
            return None

        got, forward_s, hit, cache_s = super().get_or_compute(
            f"dense forward over {windows.shape[0]} x {windows.shape[1]} tokens", "dense_forward_s", tensors, check)
        return DenseReference([got[k] for k in names], forward_s, "hit" if hit else "miss", self.key, cache_s)
