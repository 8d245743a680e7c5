"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``knorm``: keep the entries whose keys have the smallest L2 norm (Devoto et al. 2024, arXiv:2406.11430;
kvpress ``KnormPress``). No queries needed."""
from __future__ import annotations

import torch

from lcc.compressors.press import Ctx, ScorerPress


class Knorm(ScorerPress):
    """Key-norm eviction: score = -||k||."""

    name = "knorm"
    replayable = True

    def score(self, ctx: Ctx) -> torch.Tensor:
        # kvpress 0.5.5: the norm in at least float32 (bf16 norms tie distinct positions)
        return -torch.linalg.vector_norm(ctx.keys, dim=-1, dtype=torch.promote_types(ctx.keys.dtype, torch.float32))
