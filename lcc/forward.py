"""Fingerprinted: editing this file invalidates the cached dense references (docs/caching.md).

Forward passes and per-token metrics. The model is run on one window at a time with no KV cache;
only final hidden states are kept, and logits are formed chunk by chunk in ``chunked_token_metrics``."""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from lcc.metrics import chunked_token_metrics


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.inference_mode()
def final_hidden(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Final (normed) hidden states [T, H] of the base model for one window of token ids [T]."""
    out = model.base_model(input_ids=ids.view(1, -1).to(input_device(model)), use_cache=False)
    return out.last_hidden_state[0]


def compressed_hidden(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The compressed side's final hidden states: one forward, or with a KV-cache press installed
    (``lcc/compressors/press.py``), the text read in chunks through a cache the press compresses."""
    press = getattr(model, "_lcc_press", None)
    return press.read(model, ids) if press is not None else final_hidden(model, ids)


def logits_fn(model: nn.Module, weight: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden -> logits through the model's output head (optionally with a saved dense weight),
    including final-logit soft-capping where the architecture has it (Gemma 2)."""
    head = model.get_output_embeddings()
    w = head.weight if weight is None else weight
    b = getattr(head, "bias", None)
    cap = getattr(model.config, "final_logit_softcapping", None)

    def f(h: torch.Tensor) -> torch.Tensor:
        z = nn.functional.linear(h.to(w.device, w.dtype), w, b)
        return torch.tanh(z / cap) * cap if cap else z
    return f


#: ``keep_on="auto"`` keeps the dense hidden states on the GPU while all of them take at most this share of
#: the free GPU memory (and at most ``KEEP_ON_GPU_MAX_BYTES``); otherwise they go to CPU memory.
KEEP_ON_GPU_FREE_SHARE = 0.25
KEEP_ON_GPU_MAX_BYTES = 8 << 30


def resolve_keep_on(keep_on: str, model: nn.Module, windows: torch.Tensor) -> torch.device:
    """Where ``dense_pass`` keeps the hidden states: ``keep_on`` itself, or for ``"auto"`` the model's
    CUDA device when they fit (no device-to-host round trip), else the CPU."""
    if keep_on != "auto":
        return torch.device(keep_on)
    dev = input_device(model)
    if dev.type != "cuda":
        return torch.device("cpu")
    emb = model.get_input_embeddings().weight
    need = windows.numel() * emb.shape[1] * emb.element_size()
    free, _ = torch.cuda.mem_get_info(dev)
    return dev if need <= min(KEEP_ON_GPU_FREE_SHARE * free, KEEP_ON_GPU_MAX_BYTES) else torch.device("cpu")


def dense_pass(model: nn.Module, windows: torch.Tensor, keep_on: str = "auto") -> tuple[list[torch.Tensor], float]:
    """Final hidden states of every window (kept on ``keep_on``: a device, or ``"auto"``: on the GPU when they
    fit, see ``resolve_keep_on``; on a CPU model that is the CPU) and the forward time in seconds."""
    dev = input_device(model)
    keep_on = resolve_keep_on(keep_on, model, windows)
    hidden, seconds = [], 0.0
    for w in tqdm(windows, desc="dense forward", unit="doc", leave=False):
        sync(dev)
        t0 = time.perf_counter()
        h = final_hidden(model, w)
        sync(dev)
        seconds += time.perf_counter() - t0
        hidden.append(h.to(keep_on))
    return hidden, seconds


def _to_device_overlapped(t: torch.Tensor, dev: torch.device, stream) -> torch.Tensor:
    """``t.to(dev)``; a CPU tensor bound for CUDA is staged in pinned memory and copied on ``stream``, so the
    copy overlaps the work already queued on the current stream (a pageable copy would block it)."""
    if t.device == dev or stream is None or t.device.type != "cpu" or dev.type != "cuda":
        return t.to(dev)
    src = t if t.is_pinned() else t.pin_memory()
    cur = torch.cuda.current_stream(dev)
    with torch.cuda.stream(stream):
        out = src.to(dev, non_blocking=True)
    cur.wait_stream(stream)
    out.record_stream(cur)
    return out


def compressed_pass(model: nn.Module, windows: torch.Tensor, dense_hidden: list[torch.Tensor],
                    dense_head: Callable, chunk_size: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Run the (compressed) model over every window and compare with the dense hidden states.
    Returns per-token metrics stacked [n_docs, T-1] (float32, CPU) and timings."""
    dev = input_device(model)
    comp_head = logits_fn(model)
    per_doc: dict[str, list[torch.Tensor]] = {}
    t_fwd = t_met = 0.0
    side = torch.cuda.Stream(dev) if dev.type == "cuda" else None
    for w, hp in tqdm(list(zip(windows, dense_hidden)), desc="compressed forward + metrics", unit="doc",
                      leave=False):
        sync(dev)
        t0 = time.perf_counter()
        hq = compressed_hidden(model, w)
        hp = _to_device_overlapped(hp, hq.device, side)  # copies while the forward runs
        sync(dev)
        t1 = time.perf_counter()
        with torch.inference_mode():
            m = chunked_token_metrics(hp[:-1], hq[:-1], dense_head, comp_head, w[1:].to(hq.device), chunk_size)
        sync(dev)
        t_fwd += t1 - t0
        t_met += time.perf_counter() - t1
        for k, v in m.items():
            per_doc.setdefault(k, []).append(v.cpu())
    return {k: torch.stack(v) for k, v in per_doc.items()}, {"compressed_forward_s": t_fwd, "metrics_s": t_met}
