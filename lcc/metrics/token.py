"""Per-token metrics of a compressed model Q against the dense model P.

For every scored position t (the prediction of token t+1 from tokens 0..t):
  kl[t]       = KL(P_t || Q_t) = sum_v p_t(v) (log p_t(v) - log q_t(v)), in nats, computed in float32
  nll_p[t]    = -log p_t(x_{t+1}),   nll_q[t] = -log q_t(x_{t+1})
  agree[t]    = 1 if argmax p_t == argmax q_t else 0
"""
from __future__ import annotations

from typing import Callable

import torch


def token_metrics(logits_p: torch.Tensor, logits_q: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metrics for logits [T, V] of both models and next-token targets [T]. Always float32."""
    lp = torch.log_softmax(logits_p.float(), dim=-1)
    lq = torch.log_softmax(logits_q.float(), dim=-1)
    kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min_(0.0)  # rounding can give -1e-9 for identical rows
    t = targets.view(-1, 1)
    return {
        "kl": kl,
        "nll_p": -lp.gather(-1, t).squeeze(-1),
        "nll_q": -lq.gather(-1, t).squeeze(-1),
        "agree": (lp.argmax(-1) == lq.argmax(-1)).float(),
    }


def chunked_token_metrics(h_p: torch.Tensor, h_q: torch.Tensor, head_p: Callable, head_q: Callable,
                          targets: torch.Tensor, chunk_size: int = 1024) -> dict[str, torch.Tensor]:
    """``token_metrics`` from final hidden states [T, H], projecting ``chunk_size`` positions at a time
    through the heads, so that at most [chunk_size, V] logits of each model exist at once (a full
    32k x 128k fp32 logit matrix would be 16 GiB)."""
    out: dict[str, list[torch.Tensor]] = {}
    for s in range(0, targets.shape[0], chunk_size):
        e = min(s + chunk_size, targets.shape[0])
        m = token_metrics(head_p(h_p[s:e]), head_q(h_q[s:e]), targets[s:e])
        for k, v in m.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}
