"""Per-token metrics of a compressed model Q against the dense model P.

For every scored position t (the prediction of token t+1 from tokens 0..t):
  kl[t]       = KL(P_t || Q_t) = sum_v p_t(v) (log p_t(v) - log q_t(v)), in nats, computed in float32
  nll_p[t]    = -log p_t(x_{t+1}),   nll_q[t] = -log q_t(x_{t+1})
  agree[t]    = 1 if argmax p_t == argmax q_t else 0

``token_metrics`` is the reference (PyTorch, any device). On CUDA, ``chunked_token_metrics`` uses a fused
Triton kernel (``fused_token_metrics``) that reads each logit row twice instead of materialising about a
dozen float32 [chunk, V] temporaries; it computes the same quantities in float32 (see its docstring).
``LCC_METRICS_KERNEL=torch`` forces the reference everywhere.
"""
from __future__ import annotations

import os
from typing import Callable

import torch


def token_metrics(logits_p: torch.Tensor, logits_q: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metrics for logits [T, V] of both models and next-token targets [T]. Always float32."""
    # dtype= upcasts inside the kernel (no separate float32 copy of the logits on CUDA); same values
    lp = torch.log_softmax(logits_p, dim=-1, dtype=torch.float32)
    lq = torch.log_softmax(logits_q, dim=-1, dtype=torch.float32)
    kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min_(0.0)  # rounding can give -1e-9 for identical rows
    t = targets.view(-1, 1)
    return {
        "kl": kl,
        "nll_p": -lp.gather(-1, t).squeeze(-1),
        "nll_q": -lq.gather(-1, t).squeeze(-1),
        "agree": (lp.argmax(-1) == lq.argmax(-1)).float(),
    }


# ---- fused CUDA kernel ------------------------------------------------------------------------------
_KERNEL = None  # None: not tried yet; False: unavailable


def _triton_kernel():
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL or None
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 - no Triton: the reference path is used
        _KERNEL = False
        return None

    @triton.jit
    def _row_metrics(zp_ptr, zq_ptr, tgt_ptr, kl_ptr, nllp_ptr, nllq_ptr, agree_ptr, V, stride_p, stride_q,
                     BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        zp_row = zp_ptr + row * stride_p
        zq_row = zq_ptr + row * stride_q
        offs = tl.arange(0, BLOCK)
        # pass 1: per-lane max and first index of the max (for the row max, log-sum-exp and argmax)
        bp = tl.full([BLOCK], float("-inf"), tl.float32)
        bq = tl.full([BLOCK], float("-inf"), tl.float32)
        ip = tl.zeros([BLOCK], tl.int32)
        iq = tl.zeros([BLOCK], tl.int32)
        for start in range(0, V, BLOCK):
            idx = start + offs
            m = idx < V
            xp = tl.load(zp_row + idx, mask=m, other=float("-inf")).to(tl.float32)
            xq = tl.load(zq_row + idx, mask=m, other=float("-inf")).to(tl.float32)
            ip = tl.where(xp > bp, idx, ip)
            bp = tl.maximum(bp, xp)
            iq = tl.where(xq > bq, idx, iq)
            bq = tl.maximum(bq, xq)
        mp = tl.max(bp, 0)
        mq = tl.max(bq, 0)
        ap = tl.min(tl.where(bp == mp, ip, V), 0)  # first index of the row max, as torch.argmax
        aq = tl.min(tl.where(bq == mq, iq, V), 0)
        # pass 2: sp = sum e^(zp-mp), sq = sum e^(zq-mq), s = sum e^(zp-mp) * ((zp-mp) - (zq-mq))
        sp = tl.zeros([BLOCK], tl.float32)
        sq = tl.zeros([BLOCK], tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        for start in range(0, V, BLOCK):
            idx = start + offs
            m = idx < V
            xp = tl.load(zp_row + idx, mask=m, other=0.0).to(tl.float32) - mp
            xq = tl.load(zq_row + idx, mask=m, other=0.0).to(tl.float32) - mq
            ep = tl.where(m, tl.exp(xp), 0.0)
            sp += ep
            sq += tl.where(m, tl.exp(xq), 0.0)
            s += ep * (xp - xq)
        SP = tl.sum(sp, 0)
        SQ = tl.sum(sq, 0)
        lsp = tl.log(SP)
        lsq = tl.log(SQ)
        # KL = sum p (lp - lq) with lp = (zp-mp) - log SP, lq = (zq-mq) - log SQ and sum p = 1
        kl = tl.maximum(tl.sum(s, 0) / SP - (lsp - lsq), 0.0)
        t = tl.load(tgt_ptr + row)
        ztp = tl.load(zp_row + t).to(tl.float32)
        ztq = tl.load(zq_row + t).to(tl.float32)
        tl.store(kl_ptr + row, kl)
        tl.store(nllp_ptr + row, mp + lsp - ztp)
        tl.store(nllq_ptr + row, mq + lsq - ztq)
        tl.store(agree_ptr + row, (ap == aq).to(tl.float32))

    _KERNEL = (_row_metrics, triton.next_power_of_2)
    return _KERNEL


def fused_available(t: torch.Tensor) -> bool:
    """True if ``chunked_token_metrics`` will use the fused kernel for tensors like ``t``."""
    return (t.is_cuda and os.environ.get("LCC_METRICS_KERNEL", "auto") != "torch"
            and _triton_kernel() is not None)


def fused_token_metrics(logits_p: torch.Tensor, logits_q: torch.Tensor, targets: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
    """``token_metrics`` in one CUDA kernel (two reads of each logit row, float32 arithmetic).

    KL is evaluated as sum_v p_v ((zp_v - max zp) - (zq_v - max zq)) - (log SP - log SQ), algebraically
    equal to the reference's sum p (lp - lq); for identical rows it is exactly 0, and its rounding error is
    no larger than the reference's (whose lp - lq carries the rounding of both log-sum-exps)."""
    kernel, next_pow2 = _triton_kernel()
    zp = logits_p.contiguous()
    zq = logits_q.contiguous()
    n, v = zp.shape
    out = {k: torch.empty(n, dtype=torch.float32, device=zp.device) for k in ("kl", "nll_p", "nll_q", "agree")}
    if n:
        block = min(4096, next_pow2(v))
        kernel[(n,)](zp, zq, targets.contiguous(), out["kl"], out["nll_p"], out["nll_q"], out["agree"], v,
                     zp.stride(0), zq.stride(0), BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return out


def chunked_token_metrics(h_p: torch.Tensor, h_q: torch.Tensor, head_p: Callable, head_q: Callable,
                          targets: torch.Tensor, chunk_size: int = 1024) -> dict[str, torch.Tensor]:
    """``token_metrics`` from final hidden states [T, H], projecting ``chunk_size`` positions at a time
    through the heads, so that at most [chunk_size, V] logits of each model exist at once (a full
    32k x 128k fp32 logit matrix would be 16 GiB)."""
    out: dict[str, list[torch.Tensor]] = {}
    fused = fused_available(h_q)
    for s in range(0, targets.shape[0], chunk_size):
        e = min(s + chunk_size, targets.shape[0])
        zp, zq = head_p(h_p[s:e]), head_q(h_q[s:e])
        t = targets[s:e].to(zp.device)  # the heads may run where the hidden states are not (cached on CPU)
        if fused and zp.is_cuda and zq.device == zp.device:
            m = fused_token_metrics(zp, zq, t)
        else:
            m = token_metrics(zp, zq, t)
        del zp, zq
        for k, v in m.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}
