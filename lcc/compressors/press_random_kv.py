"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``random_kv``: evict uniformly random entries, the floor for informed eviction (kvpress ``RandomPress``;
named ``random_kv`` because ``random`` is the random weight pruner). As in kvpress, the generator is seeded
with ``seed`` at every call (every layer and step draws the same stream for the same shape)."""
from __future__ import annotations

import torch

from lcc.compressors.base import ints, param
from lcc.compressors.press import Ctx, ScorerPress


class RandomKV(ScorerPress):
    """Random eviction: score ~ U(0, 1), seeded."""

    name = "random_kv"
    replayable = True
    seed: int = param(0, "seed of the scores (the same at every layer and step, as kvpress)", ints(0, 2**31 - 1))

    def score(self, ctx: Ctx) -> torch.Tensor:
        g = torch.Generator(device=ctx.keys.device)
        g.manual_seed(self.seed)
        return torch.rand(*ctx.keys.shape[:-1], generator=g, device=ctx.keys.device, dtype=ctx.keys.dtype)
