"""``task=kl`` (the default): per-position KL(P_dense || Q), NLL and top-1 agreement on text windows, run by
``lcc.job``'s own path with the numbers it has always produced (docs/metrics.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lcc.tasks.base import Task


@dataclass
class KL(Task):
    name: ClassVar[str] = "kl"
    kind: ClassVar[str] = "kl"
