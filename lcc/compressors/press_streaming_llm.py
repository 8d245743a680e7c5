"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``streaming_llm``: keep the first ``n_sink`` entries (attention sinks) and the most recent ones (Xiao et al.
2023, arXiv:2309.17453; kvpress ``StreamingLLMPress``: keys keep their original RoPE positions, no
re-rotation)."""
from __future__ import annotations

import torch

from lcc.compressors.base import ints, param
from lcc.compressors.press import Ctx, ScorerPress


class StreamingLLM(ScorerPress):
    """Sinks + recent window: the entries right after the sinks are evicted first."""

    name = "streaming_llm"
    n_sink: int = param(4, "first entries always kept (attention sinks)", ints(0, 1 << 20))

    def score(self, ctx: Ctx) -> torch.Tensor:
        n = ctx.keys.shape[2]
        pruned = n - self.budget_of(ctx)
        scores = torch.ones_like(ctx.keys[..., 0])
        scores[:, :, self.n_sink:self.n_sink + pruned] = 0
        return scores
