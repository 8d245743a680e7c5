"""Recorded prefills of a press (``cache.press_prefill``): a sweep over a press's ratio or budget reads each
synthetic prompt once.

A replayable press (``Press.replayable``: it keeps the top entries of scores that do not depend on the budget)
fills the same cache and computes the same scores at every ratio; only how many entries it keeps differs. The
first job of a sweep records, per prompt, every layer's keys and values before eviction and the scores
(``Press.prefill(record=...)``); later jobs at other ratios rebuild their compressed cache from the record
(``Press.replay``) instead of reading the context again -- the same cache, bit for bit (tests/test_press.py).
One entry per prompt (189 MB for an 8k prompt of SmolLM2-135M in bf16), keyed by everything the record depends
on except the ratio: the model, dtype, device, versions, the press code, the press's other parameters, the
prompt's token ids and where its compressed read ends. Only for a press that is the job's whole compressor (the
weights are the dense model's). Worth it on a CPU, where the prefill dominates a job; on a GPU reading the
entry of a 7B model (1 GB per 8k prompt) costs more than the prefill: off by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lcc.cache.dense import dense_inputs
from lcc.cache.keys import source_fingerprint, tokens_sha256
from lcc.cache.store import TensorStore, key_of


def _check(tensors: dict, meta: dict) -> str | None:
    n = sum(1 for k in tensors if k.startswith("keys."))
    if "last" not in tensors or n == 0 or any(f"values.{i}" not in tensors for i in range(n)):
        return "incomplete record (last, keys.L, values.L)"
    return None


@dataclass
class PrefillStore:
    """The recorded prefills of one press in one job (``press_prefill`` entries); counts what it served."""

    store: TensorStore
    inputs: dict
    hits: int = 0
    recorded: int = 0

    @classmethod
    def for_job(cls, root: Path, cfg: Any, model, press, device: torch.device,
                dtype: torch.dtype) -> "PrefillStore":
        ident = {k: v for k, v in press.params().items() if k not in ("ratio", "budget", "chunk")}
        ident["targets"] = press.targets  # which layers (canonical JSON writes its repr)
        inputs = dense_inputs("press_prefill", cfg, model, device, dtype,
                              source_fingerprint("models.py", "compressors"), press={"name": press.name, **ident})
        return cls(TensorStore(root, "press_prefill"), inputs)

    def _key(self, prompt: torch.Tensor, cut: int) -> tuple[str, dict]:
        inputs = {**self.inputs, "prompt_sha256": tokens_sha256(prompt), "cut": int(cut)}
        return key_of(inputs), inputs

    def get(self, prompt: torch.Tensor, cut: int) -> dict[str, torch.Tensor] | None:
        found = self.store.read(self._key(prompt, cut)[0], _check)
        if found is None:
            return None
        self.hits += 1
        return found[0]

    def put(self, prompt: torch.Tensor, cut: int, record: dict[str, torch.Tensor]) -> None:
        """Store ``record`` through the store's one locked write path (an entry another job wrote meanwhile is
        kept and not counted as recorded here; a killed writer's temporary folder is cleaned)."""
        key, inputs = self._key(prompt, cut)
        _, _, hit = self.store.get_or_create(key, inputs, lambda: (record, {}), _check)
        self.recorded += not hit

    def report(self) -> dict[str, Any]:
        return {"press_prefill": f"{self.hits} hit, {self.recorded} recorded", "press_prefill_dir": str(self.store.dir)}
