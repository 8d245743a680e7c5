"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``adakv``: head-adaptive budgets around a score-based press (Feng et al. 2024, arXiv:2407.11550; kvpress
``AdaKVPress``). The layer keeps ``n_keep x kv_heads`` entries in all, chosen by the inner press's scores
across all its heads at once; every head first secures its ``alpha_safeguard x n_keep`` best entries. Heads end
with different counts: the cache is gathered to the largest and the unused slots are masked (press.py)."""
from __future__ import annotations

from typing import Any

import torch

from lcc import ConfigError
from lcc.compressors.base import Valid, build, fraction, param, plain
from lcc.compressors.press import Ctx, Press, ScorerPress, presses


class AdaKV(Press):
    """AdaKV: per-head budgets from another press's scores."""

    name = "adakv"
    press: str = param("snapkv", "the score-based press whose scores are ranked across heads",
                       Valid("the name of a score-based press", lambda v: isinstance(v, str)))
    press_params: Any = param(default_factory=dict, doc="parameters of the inner press (its ratio/budget are "
                                                        "this press's)")
    alpha_safeguard: float = param(0.20, "fraction of n_keep each head keeps at least", fraction(hi_closed=True))

    def check(self) -> None:
        super().check()
        scorers = sorted(n for n, c in presses().items() if issubclass(c, ScorerPress))
        if self.press not in scorers:
            raise ConfigError(f"press={self.press!r} is invalid; valid: one of {scorers}")
        pp = plain(self.press_params) or {}
        if not isinstance(pp, dict) or {"ratio", "budget", "name"} & set(pp):
            raise ConfigError(f"press_params={pp!r} is invalid; valid: a mapping of the inner press's own "
                              f"parameters (not ratio, budget or name)")
        self.press_params = pp
        try:
            self.inner = build({"name": self.press, **pp, "ratio": self.ratio, "budget": self.budget,
                                "targets": self.targets})
        except ConfigError as e:
            raise ConfigError(f"press_params: {e}") from None

    @property
    def uses_queries(self):  # type: ignore[override]
        return self.inner.uses_queries

    def level(self) -> str:
        return super().level() + f",{self.press}"

    def select(self, ctx: Ctx):
        self.inner.observe(ctx)
        b, kvh, n, _ = ctx.keys.shape
        m = self.inner.budget_of(ctx)
        if m >= n and ctx.valid is None:
            return None
        scores = self.inner.score(ctx).clone()
        if ctx.valid is not None:
            scores = scores.masked_fill(~ctx.valid, torch.finfo(scores.dtype).min)
        n_safe = int(m * self.alpha_safeguard)
        if self.alpha_safeguard > 0:  # kvpress 0.5.5: at least one secured entry per head
            n_safe = max(1, n_safe) if m > 0 else 0
        top = torch.topk(scores, n_safe, dim=-1).indices
        scores.scatter_(-1, top, torch.finfo(scores.dtype).max)
        n_pruned = kvh * (n - m)
        pruned = torch.topk(-scores.reshape(b, -1), n_pruned, dim=1).indices
        keep = torch.ones(b, kvh * n, dtype=torch.bool, device=scores.device)
        keep.scatter_(1, pruned, False)
        keep = keep.view(b, kvh, n)
        counts = keep.sum(-1)
        width = int(counts.max())
        pos = torch.arange(n, device=keep.device)
        order = torch.argsort((~keep).long() * n + pos, dim=-1)[..., :width]  # kept first, in position order
        valid = torch.arange(width, device=keep.device).view(1, 1, -1) < counts.unsqueeze(-1)
        return order, valid
