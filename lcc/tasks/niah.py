"""``task=niah``: needles in a haystack (RULER's NIAH family). Needles "One of the special magic numbers for
<key> is: <value>." hidden in text of the ``data`` source (or filler); single or multi-key (``n_keys``
needles, of which the first ``n_queries`` are asked and the others are distractors), several values per key
(``n_values``), number or word values. The first asked needle sits at the job's depth; every other needle at a
seeded random depth."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lcc import ConfigError
from lcc.tasks.base import check_choice, check_int, register
from lcc.tasks.synthetic import PromptBuilder, Sample, SyntheticTask, random_key, random_number, random_word


@register
@dataclass
class NIAH(SyntheticTask):
    name: ClassVar[str] = "niah"
    n_keys: int = 1             # needles with distinct keys
    n_queries: int = 1          # how many of them are asked (the rest are distractors)
    n_values: int = 1           # values per key
    value_type: str = "number"  # number | word
    digits: int = 7
    haystack: str = "data"      # data: text of the `data` source (default pydoc); noise: filler sentences
    max_new_tokens: int = 16

    def check(self) -> None:
        super().check()
        check_int(self, "n_keys", 1, 100)
        check_int(self, "n_queries", 1, 100)
        check_int(self, "n_values", 1, 100)
        check_int(self, "digits", 1, 30)
        check_choice(self, "value_type", ["number", "word"])
        check_choice(self, "haystack", ["data", "noise"])
        if self.n_queries > self.n_keys:
            raise ConfigError(f"task.n_queries={self.n_queries} exceeds task.n_keys={self.n_keys}; "
                              f"valid: 1..n_keys")

    def make(self, b: PromptBuilder, rng: np.random.Generator, depth: float, index: int) -> Sample:
        keys: list[str] = []
        for _ in range(self.n_keys):
            keys.append(random_key(rng, set(keys)))
        used: set[str] = set()
        values = []
        for _ in keys:
            vs = []
            for _ in range(self.n_values):
                v = random_number(rng, self.digits) if self.value_type == "number" else random_word(rng, used)
                while v in used:
                    v = random_number(rng, self.digits)
                used.add(v)
                vs.append(v)
            values.append(vs)
        what = "numbers" if self.value_type == "number" else "words"
        needles = []
        for i, (k, vs) in enumerate(zip(keys, values)):
            for j, v in enumerate(vs):
                d = depth if (i, j) == (0, 0) else float(rng.uniform())
                needles.append((d, f" One of the special magic {what} for {k} is: {v}. "))
        asked = keys[:self.n_queries]
        expected = [v for vs in values[:self.n_queries] for v in vs]
        names = ", ".join(asked)
        inst = (f"Some special magic {what} are hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {what} afterwards.\n\n")
        if len(expected) == 1:
            q = f"\n\nWhat is the special magic {what[:-1]} for {names} mentioned in the provided text?"
            prefix = f"The special magic {what[:-1]} for {names} mentioned in the provided text is"
        else:
            q = f"\n\nWhat are all the special magic {what} for {names} mentioned in the provided text?"
            prefix = f"The special magic {what} for {names} mentioned in the provided text are"
        ids, starts, answer = b.build(inst, q, prefix, needles, self.haystack, rng, " " + ", ".join(expected))
        return self.sample(b, depth, index, ids, starts[0], answer, expected)
