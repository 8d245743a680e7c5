"""``task=passkey``: a random number hidden in filler text (Landmark Attention's pass-key retrieval test)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lcc.checks import choice, ints, param
from lcc.tasks.synthetic import Spec, SyntheticTask, random_number

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.\n\n")


@dataclass
class Passkey(SyntheticTask):
    name: ClassVar[str] = "passkey"
    digits: int = param(5, "length of the pass key", ints(1, 30))
    haystack: str = param("noise", "noise: \"The grass is green. ...\" repeated; data: text of the `data` source",
                          choice("noise", "data"))

    def spec(self, rng: np.random.Generator, depth: float) -> Spec:
        key = random_number(rng, self.digits)
        needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
        return Spec(INSTRUCTION, "\n\nWhat is the pass key?", "The pass key is", [(depth, needle)], f" {key}", [key])
