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
from lcc.checks import choice, ints, param
from lcc.tasks.synthetic import Spec, SyntheticTask, distinct_number, n_numbers, random_key
from lcc.tasks.words import value_words

#: the words of niah's frame (instruction, question, answer prefix): no word value is one of them
FRAME_WORDS = set("some special magic numbers words number word are is hidden within the following text make sure to "
                  "memorize it i will quiz you about afterwards what all for mentioned in provided one of the".split())
#: word values: disjoint from the keys' words and the frame's (lcc.tasks.words.value_words)
VALUES = value_words(FRAME_WORDS)


@dataclass
class NIAH(SyntheticTask):
    name: ClassVar[str] = "niah"
    n_keys: int = param(1, "needles with distinct keys", ints(1, 100))
    n_queries: int = param(1, "how many of them are asked (the first ones; the others are distractors)", ints(1, 100))
    n_values: int = param(1, "values per key (multi-value)", ints(1, 100))
    value_type: str = param("number", "number | word", choice("number", "word"))
    digits: int = param(7, "digits of a number value", ints(1, 30))
    haystack: str = param("data", "data: text of the `data` source (pydoc by default); noise: filler sentences",
                          choice("data", "noise"))

    def check(self) -> None:
        super().check()
        if self.n_queries > self.n_keys:
            raise ConfigError(f"task.n_queries={self.n_queries} exceeds task.n_keys={self.n_keys}; "
                              f"valid: 1..n_keys")
        n = self.n_keys * self.n_values
        have = len(VALUES) if self.value_type == "word" else n_numbers(self.digits)
        if n > have:
            pool = (f"the {have} words of niah's value list" if self.value_type == "word"
                    else f"the {have} numbers of task.digits={self.digits} digits")
            raise ConfigError(f"task.n_keys * task.n_values = {self.n_keys} * {self.n_values} = {n} distinct values "
                              f"are needed, more than {pool}; valid: n_keys * n_values <= {have}"
                              + (" (or value_type=number)" if self.value_type == "word" else
                                 f" (or task.digits >= {next(d for d in range(1, 31) if n_numbers(d) >= n)})"))

    def spec(self, rng: np.random.Generator, depth: float) -> Spec:
        keys: list[str] = []
        for _ in range(self.n_keys):
            keys.append(random_key(rng, set(keys)))
        used: set[str] = set()
        values = []
        for _ in keys:
            vs = []
            for _ in range(self.n_values):
                if self.value_type == "number":
                    v = distinct_number(rng, self.digits, used)
                else:  # uniform among the word values not drawn yet: no rejection loop
                    left = [w for w in VALUES if w not in used]
                    v = left[int(rng.integers(0, len(left)))]
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
        return Spec(inst, q, prefix, needles, " " + ", ".join(expected), expected)
