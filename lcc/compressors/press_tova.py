"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``tova``: rank entries by the attention of the last query, averaged over all query heads (the same ranking
for every KV head); the last entry is kept (Oren et al. 2024, arXiv:2401.06104; kvpress ``TOVAPress``). In
``task=kl`` with ``chunk=1`` this is TOVA's per-token eviction."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lcc.compressors.press import Ctx, ScorerPress, window_attention


class TOVA(ScorerPress):
    """TOVA: last-token attention, head-averaged."""

    name = "tova"
    replayable = True
    uses_queries = True

    def score(self, ctx: Ctx) -> torch.Tensor:
        att = window_attention(ctx.module, ctx.hidden, ctx.keys, 1, ctx.position_embeddings)  # [b, H, 1, n-1]
        scores = att.mean(1).repeat(1, ctx.keys.shape[1], 1)
        return F.pad(scores, (0, 1), value=scores.max().item() + 1)
