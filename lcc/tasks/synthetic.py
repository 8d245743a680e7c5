"""Synthetic long-context prompts (the family of RULER and of Landmark Attention's pass-key test), generated
from a seed, offline, at any context length, in tokens of the model's own tokenizer.

A prompt is ``head + haystack-with-needles + tail`` where ``head`` is the BOS token or the chat template's
opening plus the task's instruction, and ``tail`` the question, the template's closing (assistant turn) and
the answer prefix ("The pass key is") and the reference answer's leading whitespace tokens. The pieces are
tokenized separately and concatenated, so the prompt is exactly ``ctx`` tokens: the haystack gets what the
frame and the needles leave. A needle at depth ``d`` goes in front of haystack token ``round(d * H)``, moved
back to the nearest sentence boundary (at most ``SNAP`` tokens) so that no word is cut; the prompt records where
it landed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from lcc import ConfigError
from lcc.tasks.base import Task, check_choice, check_int

log = logging.getLogger(__name__)

#: Landmark Attention's pass-key filler ("noise" haystack of RULER)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
SNAP = 256
#: shortest context a synthetic task accepts (its frame, question and needles need ~100-200 tokens)
MIN_CTX = 256
SENTENCE_ENDS = (".", "!", "?", "\n", ".\n", "\n\n")
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Sample:
    """One prompt with its reference answer."""

    depth: float
    index: int
    prompt: torch.Tensor            # LongTensor [ctx]
    answer: torch.Tensor            # LongTensor [n]: the reference continuation, teacher-forced
    expected: list[str]             # strings that must all appear in the greedy output
    needle_pos: int                 # token index in the prompt where the (first queried) needle starts
    answer_text: str = ""
    question_pos: int = -1          # where the question (the frame's tail) starts; -1: unknown


class PromptBuilder:
    """Tokenizes the frame and the haystack of prompts for one tokenizer, context length and data source."""

    def __init__(self, tok: Any, ctx: int, chat_template: bool | str, data_cfg: Any = None):
        self.tok, self.ctx, self.data_cfg = tok, ctx, data_cfg
        has_template = bool(getattr(tok, "chat_template", None)) and hasattr(tok, "apply_chat_template")
        if chat_template is True and not has_template:
            raise ConfigError("task.chat_template=true but the model's tokenizer has no chat template; "
                              "valid: auto or false")
        self.templated = has_template if chat_template == "auto" else bool(chat_template)
        self._stream: torch.Tensor | None = None
        self._ends: dict[int, bool] = {}

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def frame(self, instruction: str, question: str, answer_prefix: str) -> tuple[list[int], list[int]]:
        """(head, tail) token ids around the haystack."""
        if self.templated:
            mark = "\x00LCC-HAYSTACK\x00"
            text = self.tok.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                                add_generation_prompt=True)
            pre, post = text.split(mark)
            return self.encode(pre + instruction), self.encode(question + post + answer_prefix)
        bos = getattr(self.tok, "bos_token_id", None)
        head = ([bos] if bos is not None else []) + self.encode(instruction)
        return head, self.encode(question + " " + answer_prefix)

    # ---- haystacks -------------------------------------------------------------------------------
    def noise(self, n: int) -> list[int]:
        unit = self.encode(NOISE)
        reps = n // len(unit) + 1
        return (unit * reps)[:n]

    def text(self, n: int, rng: np.random.Generator) -> list[int]:
        """``n`` consecutive tokens of the ``data`` source from a seeded offset (the source repeats if short)."""
        if self._stream is None:
            from lcc.data import token_stream
            self._stream = token_stream(self.data_cfg, self.tok)
            log.info("haystack: %d tokens of data=%s", len(self._stream), self.data_cfg.name)
        s = self._stream
        if len(s) < n + 1:
            s = s.repeat(n // len(s) + 2)
        off = int(rng.integers(0, len(s) - n))
        return s[off:off + n].tolist()

    def haystack(self, kind: str, n: int, rng: np.random.Generator) -> list[int]:
        return self.noise(n) if kind == "noise" else self.text(n, rng)

    def _is_end(self, tid: int) -> bool:
        if tid not in self._ends:
            self._ends[tid] = self.decode([tid]).rstrip(" ").endswith(SENTENCE_ENDS)
        return self._ends[tid]

    def snap(self, hay: list[int], pos: int) -> int:
        """The nearest sentence boundary at or before ``pos`` (within SNAP tokens), else ``pos``."""
        if pos <= 0 or pos >= len(hay):
            return max(0, min(pos, len(hay)))
        for p in range(pos, max(0, pos - SNAP) - 1, -1):
            if p == 0 or self._is_end(hay[p - 1]):
                return p
        return pos

    def assemble(self, head: list[int], hay: list[int], needles: list[tuple[float, list[int]]],
                 tail: list[int]) -> tuple[list[int], list[int]]:
        """Insert needles (depth, ids) into ``hay``; returns (prompt ids, start index of each needle)."""
        cuts = [self.snap(hay, round(d * len(hay))) for d, _ in needles]
        order = sorted(range(len(needles)), key=lambda i: (cuts[i], i))
        ids, starts, last = list(head), [0] * len(needles), 0
        for i in order:
            ids += hay[last:cuts[i]]
            starts[i] = len(ids)
            ids += needles[i][1]
            last = cuts[i]
        ids += hay[last:] + tail
        return ids, starts

    def split_answer(self, answer: str) -> tuple[list[int], list[int]]:
        """(lead, rest) of the answer's tokens: ``lead`` its leading whitespace-only tokens (SmolLM2 and Llama
        tokenize " 71432" as " ", "7", "1", ...), which end the prompt, ``rest`` what the model must produce.
        Without the split the first greedy token decides between " " and a word (" the", " a") after the
        answer prefix: a wording choice, not retrieval (docs/tasks.md, "Where the answer starts")."""
        ids = self.encode(answer)
        k = 0
        while k < len(ids) - 1 and not self.decode([ids[k]]).strip():
            k += 1
        return ids[:k], ids[k:]

    def build(self, instruction: str, question: str, answer_prefix: str, needles: list[tuple[float, str]],
              haystack: str, rng: np.random.Generator, answer: str) -> tuple[list[int], list[int], list[int]]:
        """A prompt of exactly ``ctx`` tokens; returns (prompt ids, start of each needle, answer ids). The prompt
        ends with the answer's leading whitespace tokens (``split_answer``)."""
        head, tail = self.frame(instruction, question, answer_prefix)
        lead, answer_ids = self.split_answer(answer)
        tail = tail + lead
        nids = [(d, self.encode(t)) for d, t in needles]
        n_hay = self.ctx - len(head) - len(tail) - sum(len(t) for _, t in nids)
        if n_hay < 16:
            raise ConfigError(f"ctx.tokens={self.ctx} is too short for this task's prompt frame and needles "
                              f"({self.ctx - n_hay} tokens); valid: ctx >= {self.ctx - n_hay + 16}")
        ids, starts = self.assemble(head, self.haystack(haystack, n_hay, rng), nids, tail)
        self.question_pos = len(ids) - len(tail)  # a KV-cache press compresses the context before it
        assert len(ids) == self.ctx, (len(ids), self.ctx)
        return ids, starts, answer_ids


@dataclass
class SyntheticTask(Task):
    """Common parameters of the synthetic tasks; a subclass implements ``make``."""

    kind: ClassVar[str] = "synthetic"
    depths: list = field(default_factory=lambda: list(DEFAULT_DEPTHS))
    n_samples: int = 20
    chat_template: Any = "auto"
    max_new_tokens: int = 16

    def check(self) -> None:
        d = self.depths
        if (not isinstance(d, (list, tuple)) or not d
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in d)):
            raise ConfigError(f"task.depths={d!r} is invalid; valid: a non-empty list of numbers in [0, 1]")
        if len(set(d)) != len(d):
            raise ConfigError(f"task.depths={list(d)!r} repeats a depth; valid: distinct numbers in [0, 1]")
        self.depths = [float(x) for x in d]
        check_int(self, "n_samples", 1)
        check_int(self, "max_new_tokens", 1, 4096)
        check_choice(self, "chat_template", ["auto", True, False])

    def check_job(self, cfg: Any) -> None:
        ctx = cfg.ctx.tokens
        if isinstance(ctx, int) and ctx < MIN_CTX:
            raise ConfigError(f"ctx.tokens={ctx} is too short for task={self.name}; valid: ctx >= {MIN_CTX}")

    def make(self, b: PromptBuilder, rng: np.random.Generator, depth: float, index: int) -> Sample:
        raise NotImplementedError

    def samples(self, tok: Any, ctx: int, seed: int, data_cfg: Any = None) -> list[Sample]:
        """``n_samples`` prompts per depth; prompt (depth i, sample j) is drawn from seed (seed, i, j) alone,
        so a job's prompts do not depend on the other depths or on n_samples."""
        b = PromptBuilder(tok, ctx, self.chat_template, data_cfg)
        out = []
        for i, depth in enumerate(self.depths):
            for j in range(self.n_samples):
                rng = np.random.default_rng([seed, i, j])
                s = self.make(b, rng, depth, j)
                if not all(e in s.answer_text for e in s.expected):  # the reference must score as correct
                    raise AssertionError(f"reference answer {s.answer_text!r} lacks {s.expected}")
                out.append(s)
        return out

    @staticmethod
    def sample(b: PromptBuilder, depth: float, index: int, ids: list[int], needle_pos: int, answer: list[int],
               expected: list[str]) -> Sample:
        return Sample(depth=depth, index=index, prompt=torch.tensor(ids, dtype=torch.long),
                      answer=torch.tensor(answer, dtype=torch.long), expected=expected,
                      needle_pos=needle_pos, answer_text=b.decode(answer),
                      question_pos=getattr(b, "question_pos", -1))


def random_number(rng: np.random.Generator, digits: int) -> str:
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def random_word(rng: np.random.Generator, exclude: set[str] = frozenset()) -> str:
    from lcc.tasks.words import WORDS
    while True:
        w = WORDS[int(rng.integers(0, len(WORDS)))]
        if w not in exclude:
            return w


def random_key(rng: np.random.Generator, exclude: set[str] = frozenset()) -> str:
    """Two words joined by a hyphen (RULER's keys are word pairs), ~10^4 distinct keys."""
    from lcc.tasks.words import ADJECTIVES, WORDS
    while True:
        k = f"{ADJECTIVES[int(rng.integers(0, len(ADJECTIVES)))]}-{WORDS[int(rng.integers(0, len(WORDS)))]}"
        if k not in exclude:
            return k
