"""``task=vt``: variable tracking (RULER). Chains of assignments "VAR ABCDE = 12345." then
"VAR FGHIJ = VAR ABCDE." ... hidden in filler; the question asks for every variable that holds the first
chain's value. The chain's first statement sits at the job's depth, its ``n_hops`` later statements evenly
between there and the end of the haystack (in order); other chains (distractors) at seeded random depths."""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lcc import ConfigError
from lcc.checks import choice, ints, param
from lcc.tasks.synthetic import MAX_TRIES, Spec, SyntheticTask, distinct_number, n_numbers


def _var(rng: np.random.Generator, used: set[str]) -> str:
    """A new 5-letter name (26^5 of them; a job uses at most 20 x 51): bounded rejection sampling."""
    for _ in range(MAX_TRIES):
        v = "".join(string.ascii_uppercase[int(i)] for i in rng.integers(0, 26, 5))
        if v not in used:
            used.add(v)
            return v
    raise RuntimeError(f"no new variable name after {MAX_TRIES} draws ({len(used)} in use)")


#: 5-letter words of the frame and of the noise haystack: never a variable name (matching ignores case)
NOT_NAMES = ("TRACK", "CHAIN", "VALUE", "ABOVE", "GRASS", "GREEN", "THERE", "AGAIN")


@dataclass
class VT(SyntheticTask):
    name: ClassVar[str] = "vt"
    n_chains: int = param(1, "chains; the first is asked, the others are distractors", ints(1, 20))
    n_hops: int = param(4, "assignments after the first: n_hops + 1 variables hold the value", ints(1, 50))
    digits: int = param(5, "digits of the value", ints(1, 30))
    haystack: str = param("noise", "noise: filler sentences; data: text of the `data` source", choice("noise", "data"))

    def check(self) -> None:
        super().check()
        if self.n_chains > n_numbers(self.digits):
            raise ConfigError(f"task.n_chains={self.n_chains} chains need distinct values, more than the "
                              f"{n_numbers(self.digits)} numbers of task.digits={self.digits} digits; valid: "
                              f"n_chains <= {n_numbers(self.digits)} or more digits")

    def spec(self, rng: np.random.Generator, depth: float) -> Spec:
        used: set[str] = set(NOT_NAMES)
        vals: set[str] = set()
        needles, chains = [], []
        for c in range(self.n_chains):
            value = distinct_number(rng, self.digits, vals)
            vals.add(value)
            names = [_var(rng, used) for _ in range(self.n_hops + 1)]
            if c == 0:
                ds = [depth + (1 - depth) * k / (self.n_hops + 1) for k in range(self.n_hops + 1)]
            else:
                ds = sorted(float(x) for x in rng.uniform(size=self.n_hops + 1))
            stmts = [f" VAR {names[0]} = {value}. "] + [f" VAR {names[k]} = VAR {names[k - 1]}. "
                                                       for k in range(1, len(names))]
            needles += list(zip(ds, stmts))
            chains.append((value, names))
        value, names = chains[0]
        inst = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
        q = f"\n\nQuestion: Find all variables that are assigned the value {value} in the text above."
        prefix = (f" Answer: According to the chain(s) of variable assignment in the text above, {len(names)} "
                  f"variables are assigned the value {value}, they are:")
        return Spec(inst, q, prefix, needles, " " + " ".join(names), names)
