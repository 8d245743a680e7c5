"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``h2o``: heavy hitters -- rank entries by the attention they have received, accumulated over every query
that saw them, divided by the number of such queries, averaged over the query heads of each KV head (Zhang et
al. 2023, arXiv:2306.14048; kvpress ``ObservedAttentionPress``). kvpress reads the full attention matrix from
eager attention; here the same sums are computed from the layer's queries in blocks of ``QUERY_BLOCK`` (no n x n
matrix, any attention implementation). Across chunks (``task=kl``) the sums and counts are kept with the cache
entries and grow with every chunk's queries, as H2O's accumulated score."""
from __future__ import annotations

import torch

from lcc.compressors.press import Ctx, ScorerPress, attention_sums


class H2O(ScorerPress):
    """H2O / observed attention: mean attention received."""

    name = "h2o"
    replayable = True
    uses_queries = True

    def observe(self, ctx: Ctx) -> None:
        total, count = attention_sums(ctx.module, ctx.hidden, ctx.keys, ctx.position_embeddings, ctx.valid)
        st, n = ctx.state, ctx.keys.shape[2]
        count = count.to(total.dtype).view(1, 1, -1).expand_as(total)
        if "sum" in st:
            pad = n - st["sum"].shape[-1]
            total = total + torch.nn.functional.pad(st["sum"], (0, pad))
            count = count + torch.nn.functional.pad(st["count"], (0, pad))
        st["sum"], st["count"] = total, count.contiguous()

    def score(self, ctx: Ctx) -> torch.Tensor:
        b, kvh, n, _ = ctx.keys.shape
        s = (ctx.state["sum"] / ctx.state["count"].clamp(min=1)).to(ctx.keys.dtype)
        return s.view(b, kvh, -1, n).mean(2)
