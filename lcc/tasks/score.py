"""Fingerprinted: editing this file invalidates the cached dense scores of passkey, niah and vt.

Scoring one model on synthetic prompts: greedy decoding with a KV cache, teacher-forced answer.

Per prompt, one prefill of the prompt fills the model's KV cache. The reference answer's tokens are then fed
in one teacher-forced step on that cache: their final hidden states give the answer NLL, and (against the
dense model's, kept from the dense pass) the KL at the answer positions. Greedy decoding reuses the same
forward: while the argmax at an answer position equals the reference token, greedy decoding would have
produced exactly that token (what speculative decoding verifies in one batch). Where they first differ, the
cache is cropped back and decoding continues token by token (KV cache) until ``max_new_tokens`` tokens,
an end-of-sequence token, or an output that already contains every expected string. A greedy output that
reproduces the whole reference answer is correct and is not extended.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from lcc.compressors.attention_fns import cache_kwarg
from lcc.forward import input_device, sync

if TYPE_CHECKING:
    from lcc.tasks.synthetic import Sample


def matches(text: str, expected: list[str]) -> bool:
    """RULER's string match, on word boundaries: every expected string occurs in the output (case-insensitive)
    as a whole token, not inside a longer word or number ("arrow" is not found in "narrow", "71432" not in
    "714325"). The end of the output is a boundary."""
    return all(re.search(rf"(?<!\w){re.escape(e)}(?!\w)", text, re.IGNORECASE) for e in expected)


@dataclass
class Scored:
    hidden: torch.Tensor      # [n_answer, H] final hidden states at the answer positions (CPU)
    generated: list[int]      # greedy output token ids
    seconds: float


def crop(cache, length: int) -> None:
    """Drop cached positions >= ``length`` (a negative argument is 'remove that many' in every version). A
    press's cache counts the positions it has seen (``_lcc_seen``), more than the entries it keeps."""
    seen = getattr(cache, "_lcc_seen", None)
    n = (cache.get_seq_length() if seen is None else seen) - length
    if n > 0:
        cache.crop(-n)
        if seen is not None:
            cache._lcc_seen = length


def eos_ids(model: nn.Module, tok) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tok):
        e = getattr(src, "eos_token_id", None)
        if e is not None:
            ids.update(e if isinstance(e, (list, tuple)) else [e])
    return {int(i) for i in ids}


@torch.inference_mode()
def score_sample(model: nn.Module, head: Callable, s: Sample, max_new: int, eos: set[int],
                 decode: Callable[[list[int]], str]) -> Scored:
    base, dev = model.base_model, input_device(model)
    kw = cache_kwarg(base)
    sync(dev)
    t0 = time.perf_counter()
    prompt = s.prompt.view(1, -1).to(dev)
    answer = s.answer.to(dev)
    press = getattr(model, "_lcc_press", None)  # KV-cache eviction: context, compress, question (press.py)
    out = press.prefill(base, prompt, s.question_pos) if press else base(input_ids=prompt, use_cache=True)
    cache = out[kw] if kw in out else out.past_key_values
    if hasattr(cache, "activate_past_recording"):  # sliding-window layers keep what the answer step adds, so that
        cache.activate_past_recording()           # crop() can roll back past their window (mistral, gemma2/3, ...)
    hs = [out.last_hidden_state[0, -1:]]
    del out
    if len(answer) > 1:
        hs.append(base(input_ids=answer[:-1].view(1, -1), use_cache=True, **{kw: cache}).last_hidden_state[0])
    hidden = torch.cat(hs)
    pred = head(hidden).argmax(-1)
    same = (pred == answer).tolist()
    j = same.index(False) if False in same else len(same)
    gen = answer[:j].tolist()
    if j < len(answer) and j < max_new:
        gen.append(int(pred[j]))
        crop(cache, s.prompt.numel() + j)  # the cache now ends where the greedy output diverged
        while len(gen) < max_new and gen[-1] not in eos and not matches(decode(gen), s.expected):
            o = base(input_ids=torch.tensor([[gen[-1]]], device=dev), use_cache=True, **{kw: cache})
            gen.append(int(head(o.last_hidden_state[0, -1:]).argmax(-1)))
    gen = gen[:max_new]
    sync(dev)
    return Scored(hidden=hidden.float().cpu(), generated=gen, seconds=time.perf_counter() - t0)


def score_all(model: nn.Module, head: Callable, samples: list[Sample], max_new: int, eos: set[int],
              decode: Callable[[list[int]], str], desc: str) -> list[Scored]:
    return [score_sample(model, head, s, max_new, eos, decode)
            for s in tqdm(samples, desc=desc, unit="prompt", leave=False)]
