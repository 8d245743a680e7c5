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

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from lcc import ConfigError
from lcc.checks import Valid, choice, ints, is_int, param
from lcc.data import token_stream
from lcc.tasks.base import Task
from lcc.tasks.prelaunch import tokenizer_of
from lcc.tasks.report import report as task_report
from lcc.tasks.runner import run_synthetic
from lcc.tasks.score import matches
from lcc.tasks.words import ADJECTIVES, WORDS

log = logging.getLogger(__name__)

#: Landmark Attention's pass-key filler ("noise" haystack of RULER)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
SNAP = 256
#: shortest context a synthetic task accepts (its frame, question and needles need ~100-200 tokens)
MIN_CTX = 256
#: fewest haystack tokens a prompt may have (what the frame, the needles and the answer's lead leave)
MIN_HAYSTACK = 16
#: ``max_new_tokens=auto``: the decoding budget is the longest reference answer of the job's prompts (in the
#: model's tokens) plus this margin, so no answer is cut by the budget, whatever the task's settings
AUTO_MARGIN = 10
#: a rejection-sampling draw that has not found a new value after this many tries draws from what is left
MAX_TRIES = 64
SENTENCE_ENDS = (".", "!", "?", "\n", ".\n", "\n\n")
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: (task parameters, ctx, seed, tokenizer) -> longest answer, of the prompt checks that passed
_CHECKED: dict[tuple, int] = {}


@dataclass
class Spec:
    """The texts of one prompt (no haystack yet): what ``PromptBuilder.build`` assembles."""

    instruction: str
    question: str
    answer_prefix: str
    needles: list[tuple[float, str]]   # (depth, text)
    answer: str                        # the reference answer (with its leading space)
    expected: list[str]                # strings that must all appear in the greedy output


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
            self._stream = token_stream(self.data_cfg, self.tok)
            log.info("haystack: %d tokens of data=%s", len(self._stream), self.data_cfg.name)
        s = self._stream
        if len(s) == 0:
            raise ConfigError(f"data={getattr(self.data_cfg, 'name', '?')} has no text for the haystack (an empty or "
                              f"whitespace-only source); valid: a source with text, or task.haystack=noise")
        if len(s) < n + 1:
            s = s.repeat(n // len(s) + 2)
        off = int(rng.integers(0, len(s) - n))
        return s[off:off + n].tolist()

    def haystack(self, source: str, n: int, rng: np.random.Generator) -> list[int]:
        return self.noise(n) if source == "noise" else self.text(n, rng)

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

    def plan(self, sp: Spec) -> tuple[int, int]:
        """(haystack tokens left, answer tokens) of a prompt's texts, without building its haystack."""
        head, tail = self.frame(sp.instruction, sp.question, sp.answer_prefix)
        lead, answer_ids = self.split_answer(sp.answer)
        used = len(head) + len(tail) + len(lead) + sum(len(self.encode(t)) for _, t in sp.needles)
        return self.ctx - used, len(answer_ids)

    def build(self, instruction: str, question: str, answer_prefix: str, needles: list[tuple[float, str]],
              haystack: str, rng: np.random.Generator, answer: str) -> tuple[list[int], list[int], list[int]]:
        """A prompt of exactly ``ctx`` tokens; returns (prompt ids, start of each needle, answer ids). The prompt
        ends with the answer's leading whitespace tokens (``split_answer``)."""
        head, tail = self.frame(instruction, question, answer_prefix)
        lead, answer_ids = self.split_answer(answer)
        tail = tail + lead
        nids = [(d, self.encode(t)) for d, t in needles]
        n_hay = self.ctx - len(head) - len(tail) - sum(len(t) for _, t in nids)
        if n_hay < MIN_HAYSTACK:
            raise ConfigError(f"ctx.tokens={self.ctx} is too short for this task's prompt frame and needles "
                              f"({self.ctx - n_hay} tokens); valid: ctx >= {self.ctx - n_hay + MIN_HAYSTACK}")
        ids, starts = self.assemble(head, self.haystack(haystack, n_hay, rng), nids, tail)
        self.question_pos = len(ids) - len(tail)  # a KV-cache press compresses the context before it
        assert len(ids) == self.ctx, (len(ids), self.ctx)
        return ids, starts, answer_ids


@dataclass
class SyntheticTask(Task):
    """Common parameters of the synthetic tasks; a subclass implements ``spec`` (the texts of one prompt)."""

    family: ClassVar[str] = "synthetic"
    reporter: ClassVar = staticmethod(task_report)
    depths: list = param(default_factory=lambda: list(DEFAULT_DEPTHS),
                         doc="where the (first asked) needle sits in the haystack: fractions of it, in [0, 1]")
    n_samples: int = param(20, "prompts per depth", ints(1))
    chat_template: Any = param("auto", "auto (the tokenizer's template if it has one) | true | false",
                               choice("auto", True, False))
    max_new_tokens: Any = param("auto", f"greedy decoding budget: auto = the longest answer + {AUTO_MARGIN} tokens, "
                                        f"or a number >= the answer's tokens",
                                Valid(f"an integer in 1..4096 or auto (the longest answer + {AUTO_MARGIN})",
                                      lambda v: v == "auto" or (is_int(v) and 1 <= v <= 4096)))

    def check(self) -> None:
        d = self.depths
        if (not isinstance(d, (list, tuple)) or not d
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in d)):
            raise ConfigError(f"task.depths={d!r} is invalid; valid: a non-empty list of numbers in [0, 1]")
        if len(set(d)) != len(d):
            raise ConfigError(f"task.depths={list(d)!r} repeats a depth; valid: distinct numbers in [0, 1]")
        self.depths = [float(x) for x in d]
        super().check()

    def check_job(self, cfg: Any) -> None:
        """ctx against the task's prompts, before launch: with the model's tokenizer where it loads offline
        (``lcc.tasks.prelaunch``), every prompt's frame, needles and answer are measured (no haystack built), so
        a ctx too short for them, a budget shorter than an answer and ``chat_template=true`` on a tokenizer
        without a template fail here, with the numbers."""
        ctx = cfg.ctx.tokens
        if isinstance(ctx, int) and ctx < MIN_CTX:
            raise ConfigError(f"ctx.tokens={ctx} is too short for task={self.name}; valid: ctx >= {MIN_CTX}")
        tok = tokenizer_of(cfg.model)
        if tok is not None and isinstance(ctx, int):
            self.check_prompts(tok, ctx, int(cfg.seed), model=str(cfg.model.get("name")))

    def spec(self, rng: np.random.Generator, depth: float) -> Spec:
        raise NotImplementedError

    # ---- the job (lcc.context.JobContext) --------------------------------------------------------------
    def prepare(self, job: Any) -> list[Sample]:
        samples = self.samples(job.tokenizer, job.ctx, job.seed, job.cfg.data)
        log.info("task %s: %d prompts of %d tokens (%d depths x %d)", self.name, len(samples), job.ctx,
                 len(self.depths), self.n_samples)
        return samples

    def probe_ids(self, job: Any) -> torch.Tensor:
        return torch.cat([s.prompt for s in job.inputs[:8]])

    def run(self, job: Any) -> dict[str, Any]:
        return run_synthetic(job, self)

    def make(self, b: PromptBuilder, rng: np.random.Generator, depth: float, index: int) -> Sample:
        sp = self.spec(rng, depth)
        ids, starts, answer = b.build(sp.instruction, sp.question, sp.answer_prefix, sp.needles,
                                      getattr(self, "haystack", "noise"), rng, sp.answer)
        return self.sample(b, depth, index, ids, starts[0], answer, sp.expected)

    def _rngs(self, seed: int):
        """(depth index, sample index, depth, rng) of every prompt: prompt (i, j) is drawn from (seed, i, j)."""
        for i, depth in enumerate(self.depths):
            for j in range(self.n_samples):
                yield i, j, depth, np.random.default_rng([seed, i, j])

    def check_prompts(self, tok: Any, ctx: int, seed: int, model: str = "the model") -> int:
        """Measure every prompt's texts with ``tok`` (no haystack): ConfigError naming the numbers if ``ctx``
        leaves a prompt fewer than MIN_HAYSTACK haystack tokens or an explicit ``max_new_tokens`` is shorter
        than an answer. Returns the longest answer's tokens."""
        memo = (json.dumps(dataclasses.asdict(self), sort_keys=True, default=str), ctx, seed, type(tok).__name__,
                str(getattr(tok, "name_or_path", "")))
        if memo in _CHECKED:  # every job of a sweep with the same task, ctx and seed: measured once
            return _CHECKED[memo]
        b = PromptBuilder(tok, ctx, self.chat_template)  # chat_template=true without a template fails here
        longest, at = 0, None
        for i, j, depth, rng in self._rngs(seed):
            n_hay, n_ans = b.plan(self.spec(rng, depth))
            if n_hay < MIN_HAYSTACK:
                need = ctx - n_hay + MIN_HAYSTACK
                raise ConfigError(
                    f"ctx.tokens={ctx} is too short for task={self.name} with these settings: prompt {j} at depth "
                    f"{depth:g} needs {ctx - n_hay} tokens of {model}'s tokenizer for its frame, question and "
                    f"needles, leaving {n_hay} (< {MIN_HAYSTACK}) for the haystack; valid: ctx.tokens >= {need}, "
                    f"or fewer/shorter needles ({self._needle_keys()})")
            if n_ans > longest:
                longest, at = n_ans, (j, depth)
        self._check_budget(longest, at, model)
        _CHECKED[memo] = longest
        return longest

    def _needle_keys(self) -> str:
        return ", ".join(f"task.{k}={getattr(self, k)}" for k in ("n_keys", "n_values", "n_chains", "n_hops", "digits")
                         if hasattr(self, k))

    def _check_budget(self, longest: int, at: tuple | None, model: str) -> None:
        if self.max_new_tokens != "auto" and self.max_new_tokens < longest:
            where = f" (prompt {at[0]} at depth {at[1]:g})" if at else ""
            raise ConfigError(
                f"task.max_new_tokens={self.max_new_tokens} is shorter than the longest reference answer of this "
                f"job's prompts: {longest} tokens of {model}'s tokenizer{where}, so that answer would score 0 "
                f"whatever the model outputs; valid: max_new_tokens >= {longest}, or auto (longest answer + "
                f"{AUTO_MARGIN} = {longest + AUTO_MARGIN})")

    def samples(self, tok: Any, ctx: int, seed: int, data_cfg: Any = None) -> list[Sample]:
        """``n_samples`` prompts per depth; prompt (depth i, sample j) is drawn from seed (seed, i, j) alone,
        so a job's prompts do not depend on the other depths or on n_samples. Sets ``decode_budget``: the
        greedy decoding budget (``max_new_tokens``, or with ``auto`` the longest answer + AUTO_MARGIN)."""
        b = PromptBuilder(tok, ctx, self.chat_template, data_cfg)
        out = []
        for i, j, depth, rng in self._rngs(seed):
            s = self.make(b, rng, depth, j)
            if not matches(s.answer_text, s.expected):  # the reference must score as correct
                raise AssertionError(f"reference answer {s.answer_text!r} lacks {s.expected}")
            out.append(s)
        longest = max(s.answer.numel() for s in out)
        at = next((s.index, s.depth) for s in out if s.answer.numel() == longest)
        self._check_budget(longest, at, getattr(tok, "name_or_path", None) or type(tok).__name__)
        self.decode_budget = longest + AUTO_MARGIN if self.max_new_tokens == "auto" else int(self.max_new_tokens)
        return out

    def params(self) -> dict[str, Any]:
        p = super().params()
        if getattr(self, "decode_budget", None) is not None:
            p["decode_budget"] = self.decode_budget   # the budget the job used (resolved from auto)
        return p

    @staticmethod
    def sample(b: PromptBuilder, depth: float, index: int, ids: list[int], needle_pos: int, answer: list[int],
               expected: list[str]) -> Sample:
        return Sample(depth=depth, index=index, prompt=torch.tensor(ids, dtype=torch.long),
                      answer=torch.tensor(answer, dtype=torch.long), expected=expected,
                      needle_pos=needle_pos, answer_text=b.decode(answer),
                      question_pos=getattr(b, "question_pos", -1))


def n_numbers(digits: int) -> int:
    """How many distinct numbers of ``digits`` digits there are (no leading zero)."""
    return 9 * 10 ** (digits - 1)


def random_number(rng: np.random.Generator, digits: int) -> str:
    """A ``digits``-digit number without a leading zero. Up to 18 digits one draw in int64 (as always: the same
    prompts); longer ones (int64 ends at 19 digits) are an 18-digit draw followed by single digits."""
    if digits <= 18:
        return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))
    return str(int(rng.integers(10 ** 17, 10 ** 18))) + "".join(str(int(d)) for d in rng.integers(0, 10, digits - 18))


def distinct(rng: np.random.Generator, draw, used: set[str], every=None, what: str = "value") -> str:
    """A draw not in ``used``: rejection sampling bounded by MAX_TRIES, then (``every()``: the whole space, when
    it is small enough to list) a uniform choice among what is left. Never loops forever: the task's check()
    refuses settings that need more distinct values than exist."""
    for _ in range(MAX_TRIES):
        v = draw()
        if v not in used:
            return v
    left = sorted(set(every()) - used) if every is not None else []
    if not left:
        raise RuntimeError(f"no distinct {what} left after {MAX_TRIES} draws ({len(used)} in use)")
    return left[int(rng.integers(0, len(left)))]


def distinct_number(rng: np.random.Generator, digits: int, used: set[str]) -> str:
    every = (lambda: (str(x) for x in range(10 ** (digits - 1), 10 ** digits))) if digits <= 6 else None
    return distinct(rng, lambda: random_number(rng, digits), used, every, f"{digits}-digit number")


def random_key(rng: np.random.Generator, exclude: set[str] = frozenset()) -> str:
    """Two words joined by a hyphen (RULER's keys are word pairs), ~10^4 distinct keys."""
    def draw() -> str:
        return f"{ADJECTIVES[int(rng.integers(0, len(ADJECTIVES)))]}-{WORDS[int(rng.integers(0, len(WORDS)))]}"
    return distinct(rng, draw, set(exclude), lambda: (f"{a}-{w}" for a in ADJECTIVES for w in WORDS), "key")
