"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``snapkv``: rank entries by the attention the last ``window_size`` queries pay them, averaged over the window,
smoothed by average pooling (``kernel_size``) and averaged over the query heads of each KV head; the window's
own entries are always kept (Li et al. 2024, arXiv:2404.14469; kvpress ``SnapKVPress``). Only the window's
queries are formed: [heads, window, n] attention weights, never n x n. With fewer new tokens than the window (a
short ``chunk``), the window is the new tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lcc.compressors.base import ConfigError, ints, param
from lcc.compressors.press import Ctx, ScorerPress, window_attention


def snap_scores(ctx: Ctx, window_size: int, kernel_size: int) -> torch.Tensor:
    b, kvh, n, _ = ctx.keys.shape
    w = min(window_size, ctx.n_new, n - 1)
    groups = ctx.module.config.num_attention_heads // kvh
    att = window_attention(ctx.module, ctx.hidden, ctx.keys, w, ctx.position_embeddings)
    scores = att.mean(dim=-2)
    scores = F.avg_pool1d(scores, kernel_size=kernel_size, padding=kernel_size // 2, stride=1)
    scores = scores.view(b, kvh, groups, n - w).mean(2)
    return F.pad(scores, (0, w), value=scores.max().item() + 1)


class SnapKV(ScorerPress):
    """SnapKV: observation-window attention, pooled."""

    name = "snapkv"
    replayable = True
    uses_queries = True
    window_size: int = param(64, "observation window: the last queries whose attention ranks the entries",
                             ints(1, 1 << 20))
    kernel_size: int = param(5, "average-pooling kernel over positions (odd)", ints(1, 1 << 10))

    def check(self) -> None:
        super().check()
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size={self.kernel_size} is invalid; valid: an odd integer (the pooled "
                              f"scores keep their length)")

    def score(self, ctx: Ctx) -> torch.Tensor:
        return snap_scores(ctx, self.window_size, self.kernel_size)
