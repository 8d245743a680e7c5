"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``expected_attention``: rank entries by the attention that *future* queries are expected to pay them
(Devoto et al. 2025, kvpress ``ExpectedAttentionPress``): the pre-RoPE queries of the new tokens (after the
first ``n_sink``) give a mean and covariance; RoPE averaged over the next ``n_future_positions`` positions is
applied to both; E[exp(q.k/sqrt d)] under a Gaussian gives the logits k.mu/sqrt d + k^T S k / 2d, softmaxed over
the entries, averaged over the query heads of each KV head, times ||v|| (``use_vnorm``); the first ``n_sink``
entries are always kept. Query statistics only: no attention matrix."""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

from lcc.compressors.base import Valid, ints, param
from lcc.compressors.press import Ctx, ScorerPress, prerope_queries, repeat_kv


class ExpectedAttention(ScorerPress):
    """Expected attention of future queries, value-norm weighted."""

    name = "expected_attention"
    replayable = True
    uses_queries = True
    n_future_positions: int = param(512, "future positions the RoPE rotation is averaged over", ints(1, 1 << 20))
    n_sink: int = param(4, "first entries always kept; their queries are left out of the statistics",
                        ints(0, 1 << 20))
    use_covariance: bool = param(True, "include the query covariance term")
    use_vnorm: bool = param(True, "multiply the scores by the value norms")
    epsilon: float = param(0.0, "added to the scores before the value-norm rescaling",
                           Valid("a number >= 0", lambda v: isinstance(v, (int, float)) and v >= 0))

    def stats(self, ctx: Ctx):
        mod = ctx.module
        start = ctx.seen - ctx.n_new  # position of the first new token
        h = ctx.hidden[:, max(0, self.n_sink - start):]
        qs = prerope_queries(mod, h)
        mu = qs.mean(dim=2, keepdim=True)
        cov = None
        if self.use_covariance:
            c = qs - mu
            cov = torch.einsum("bnsi,bnsj->bnij", c, c) / h.shape[1]
        mu = mu.squeeze(2)
        d = mod.head_dim
        pos = torch.arange(ctx.seen, ctx.seen + self.n_future_positions, device=mu.device).unsqueeze(0)
        lt = getattr(mod, "layer_type", None)  # Gemma3: one rotary per layer type (sliding / full attention)
        if lt is not None and "layer_type" in inspect.signature(mod._lcc_rotary.forward).parameters:
            cos, sin = mod._lcc_rotary(mu, pos, lt)
        else:
            cos, sin = mod._lcc_rotary(mu, pos)
        cos, sin = cos[0], sin[0]
        eye = torch.eye(d, device=cos.device, dtype=cos.dtype)
        P = torch.zeros((d, d), device=cos.device, dtype=cos.dtype)
        P[d // 2:, : d // 2], P[: d // 2, d // 2:] = torch.eye(d // 2), -torch.eye(d // 2)
        R = (cos.unsqueeze(1) * eye + sin.unsqueeze(1) * P).mean(dim=0).to(mu.device)
        mu = torch.matmul(mu, R.T)
        if cov is not None:
            cov = torch.matmul(R, torch.matmul(cov, R.T))
        return mu, cov

    def score(self, ctx: Ctx) -> torch.Tensor:
        keys = ctx.keys[:, :, self.n_sink:]
        values = ctx.values[:, :, self.n_sink:]
        mu, cov = self.stats(ctx)
        b, kvh, n, d = keys.shape
        groups = ctx.module.config.num_attention_heads // kvh
        k = repeat_kv(keys, groups).transpose(2, 3)
        scores = torch.matmul(mu.unsqueeze(2), k).squeeze(2) / math.sqrt(d)
        if self.use_covariance:
            scores += torch.einsum("bhin, bhij, bhjn->bhn", k, cov, k) / d / 2
        scores = F.softmax(scores, dim=-1)
        scores = scores.view(b, kvh, groups, n).mean(dim=2)
        if self.use_vnorm:
            scores = (scores + self.epsilon) * values.norm(dim=-1)
        return F.pad(scores, (self.n_sink, 0), value=scores.max().item() + 1)
