"""``knorm``: keep the entries whose keys have the smallest L2 norm (Devoto et al. 2024, arXiv:2406.11430;
kvpress ``KnormPress``). No queries needed."""
from __future__ import annotations

import torch

from lcc.compressors.press import Ctx, ScorerPress


class Knorm(ScorerPress):
    """Key-norm eviction: score = -||k||."""

    name = "knorm"

    def score(self, ctx: Ctx) -> torch.Tensor:
        return -ctx.keys.norm(dim=-1)
