"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``pyramidkv``: SnapKV's scores with a budget per layer that falls linearly from the first layer to the last
(a pyramid whose steepness is ``beta``), the same total as SnapKV at the same ratio (Cai et al. 2024,
arXiv:2406.02069; kvpress ``PyramidKVPress``, whose formula this is, including its fallback to the uniform
budget when the pyramid does not fit). With ``budget`` the ratio is 1 - budget / tokens seen."""
from __future__ import annotations

from lcc.compressors.base import ints, param
from lcc.compressors.press import Ctx
from lcc.compressors.press_snapkv import SnapKV


def layer_budget(ratio: float, window_size: int, beta: int, q_len: int, layer: int, n_layers: int) -> int:
    cap = window_size + q_len * (1 - ratio)
    min_num = (cap - window_size) / beta
    max_num = (cap - window_size) * 2 - min_num
    if max_num >= q_len - window_size:
        max_num = q_len - window_size
        min_num = (cap - window_size) * 2 - max_num
    if not (q_len >= max_num >= min_num >= window_size):
        return max(1, round(q_len * (1 - ratio)))  # the uniform (SnapKV) budget, at least 1
    steps = (max_num - min_num) / (n_layers - 1) if n_layers > 1 else 0.0
    return round(max_num - layer * steps)


class PyramidKV(SnapKV):
    """PyramidKV: SnapKV with pyramid layer budgets."""

    name = "pyramidkv"
    beta: int = param(20, "steepness of the pyramid (>= 1; larger = steeper)", ints(1, 1 << 20))

    def budget_of(self, ctx: Ctx) -> int:
        n, seen = ctx.keys.shape[2], ctx.seen
        ratio = self.ratio if self.budget is None else max(0.0, 1 - self.budget / seen)
        if ratio == 0:
            return n
        m = layer_budget(ratio, self.window_size, self.beta, seen, ctx.module.layer_idx,
                         ctx.module.config.num_hidden_layers)
        return max(0, min(n, m))
