"""One small registry: name -> class, for every extension point (compressors, tasks, cache codecs).

A second class under a name already taken is an error naming both (never a silent overwrite); the same class
defined again (a module imported twice, e.g. re-run in a notebook) replaces the first. An unknown name is a
``ConfigError`` naming the valid choices and the closest names.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

from lcc import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """``Registry("compressor")``: a read-only mapping name -> entry with ``add``, ``register`` and ``get``."""

    def __init__(self, what: str, name_of: Callable[[Any], Any] = lambda cls: cls.name):
        self.what = what
        self._name_of = name_of
        self._entries: dict[Any, T] = {}

    @staticmethod
    def _ident(obj: Any) -> str:
        cls = obj if isinstance(obj, type) else type(obj)
        return f"{cls.__module__}.{cls.__qualname__}"

    def add(self, name: Any, entry: T) -> T:
        old = self._entries.get(name)
        if old is not None and old is not entry and self._ident(old) != self._ident(entry):
            raise TypeError(f"two {self.what}s are named {name!r}: {self._ident(old)} and {self._ident(entry)}; "
                            f"rename one of them")
        self._entries[name] = entry
        return entry

    def register(self, cls: T) -> T:
        """Decorator / hook: register ``cls`` under its own name (``cls.name`` by default)."""
        return self.add(self._name_of(cls), cls)

    def get(self, name: Any) -> T:
        if name not in self._entries:
            choices = sorted(map(str, self._entries))
            close = difflib.get_close_matches(str(name), choices, n=3) if isinstance(name, str) else []
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"unknown {self.what} {name!r}; valid choices: {', '.join(choices)}{hint}")
        return self._entries[name]

    # the read-only mapping
    def __getitem__(self, name: Any) -> T:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def keys(self):
        return self._entries.keys()

    def values(self):
        return self._entries.values()

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {sorted(map(str, self._entries))})"
