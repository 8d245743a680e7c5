"""The one validation vocabulary of lcc (compressor and task parameters, every config group), and the checks of
local paths and text files. The bottom layer: it imports nothing of lcc but ``ConfigError``.

**A parameter is a dataclass field declared once** with :func:`param` (default, one line of documentation, the
valid values as a :class:`Valid` rule). :func:`field_problems` checks a mapping against the fields of a
dataclass: the annotation's type (booleans are booleans: ``no``, ``'false'``, ``0`` are refused), then the field's
rule; every message reads ``<key>=<value> is invalid; valid: <the rule's text>``. :func:`config_node` makes the
Hydra schema of such a dataclass (values typed ``Any``: the checks here name the valid values, stricter than
OmegaConf's conversions, which take 1 for true), to store it in Hydra's ConfigStore.
"""
from __future__ import annotations

import codecs
import dataclasses
import glob
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

MAX_SEED = 2 ** 63 - 1


# ---- rules ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Valid:
    """A rule on one value: ``ok(value)`` and how to describe the valid values."""

    text: str
    ok: Callable[[Any], bool] = lambda v: True


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def ints(lo: int, hi: int | None = None, extra: str = "") -> Valid:
    """An integer ``>= lo``, or in ``lo..hi``."""
    rng = f">= {lo}" if hi is None else f"in {lo}..{'2^63-1' if hi == MAX_SEED else hi}"
    return Valid(f"an integer {rng}{extra}", lambda v: is_int(v) and v >= lo and (hi is None or v <= hi))


def fraction(lo_closed: bool = True, hi_closed: bool = False) -> Valid:
    """A number in [0, 1) (or the interval with the given closed ends)."""
    rng = f"{'[' if lo_closed else '('}0, 1{']' if hi_closed else ')'}"
    return Valid(f"a number in {rng}", lambda v: is_num(v) and (0 <= v if lo_closed else 0 < v)
                 and (v <= 1 if hi_closed else v < 1))


def groups(whole: str = "one group per row", hi: int = 1 << 20) -> Valid:
    """A group size: a positive integer, or -1 for ``whole``."""
    return Valid(f"a positive integer up to {hi}, or -1 for {whole}",
                 lambda v: is_int(v) and (v == -1 or 1 <= v <= hi))


def _same(v: Any, c: Any) -> bool:
    """``v`` is the choice ``c``: a boolean only matches a boolean (1 is not true)."""
    return v is c if isinstance(c, bool) or isinstance(v, bool) else v == c


def choice(*options: Any, listed: bool = True) -> Valid:
    """One of ``options``, described as ``one of ['a', 'b']`` (``listed=False``: ``one of a, b``)."""
    text = f"one of {list(options)}" if listed else f"one of {', '.join(map(str, options))}"
    return Valid(text, lambda v: any(_same(v, c) for c in options))


def optional(rule: Valid) -> Valid:
    """``rule`` or null."""
    return Valid(f"{rule.text} or null", lambda v: v is None or rule.ok(v))


BOOL = Valid("true or false (a YAML boolean; strings such as 'no' or 'false' and numbers are refused)",
             lambda v: isinstance(v, bool))
STR = Valid("a non-empty string", lambda v: isinstance(v, str) and bool(v))


def str_list(scalar_ok: bool = True) -> Valid:
    """A list of non-empty strings (``scalar_ok``: or one string)."""
    return Valid("a list of non-empty strings", lambda v: (scalar_ok and isinstance(v, str) and bool(v)) or (
        isinstance(v, list) and all(isinstance(x, str) and x for x in v)))


#: the rule of an annotated type (``bool``, ``int``...), checked before the field's own rule
TYPE_RULES: dict[Any, Valid] = {bool: BOOL, int: Valid("an integer", is_int), float: Valid("a number", is_num),
                                str: Valid("a string", lambda v: isinstance(v, str))}


# ---- parameters -------------------------------------------------------------------------------------------
class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: the default of a parameter whose value, when left out, depends on other parameters (``check`` sets it)
UNSET: Any = _Sentinel("unset")
#: ``param(config=ABSENT)``: a key the Hydra config leaves out unless it is set (``+data.data_files=...``)
ABSENT: Any = _Sentinel("absent")


def param(default: Any = dataclasses.MISSING, doc: str = "", valid: Valid | None = None, *,
          default_factory: Any = dataclasses.MISSING, config: Any = dataclasses.MISSING) -> Any:
    """A parameter: a dataclass field with its documentation and its valid values. ``config``: the value the
    Hydra config starts from, when it differs from the Python default (a default ``UNSET`` in Python, "left
    out", that a config must spell out; ``ABSENT``: the config leaves the key out)."""
    return field(default=default, default_factory=default_factory,
                 metadata={"doc": doc, "valid": valid, "config": config})


def type_rule(annotation: Any) -> tuple[Valid | None, bool]:
    """(rule of the annotated type or None, whether None is allowed) for ``X`` and ``Optional[X]``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        rule = TYPE_RULES.get(inner[0]) if len(inner) == 1 else None
        return rule, type(None) in args
    return TYPE_RULES.get(annotation), False


def value_problem(annotation: Any, f: dataclasses.Field, v: Any) -> str | None:
    """The text of the valid values if ``v`` is not a valid value of the field ``f`` (annotated ``annotation``),
    else None."""
    rule, nullable = type_rule(annotation)
    if (v is None and nullable) or v is UNSET:
        return None
    valid = f.metadata.get("valid")
    if (rule and not rule.ok(v)) or (valid and not valid.ok(v)):
        return (valid or rule).text
    return None


def field_problems(cls: type, values: Any, prefix: str = "") -> list[str]:
    """``<prefix><key>=<value> is invalid; valid: ...`` for every field of ``cls`` whose value in ``values`` (a
    mapping, or an object read with ``getattr``) is invalid; keys left out are not checked."""
    out, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if isinstance(values, dict):
            if f.name not in values:
                continue
            v = values[f.name]
        else:
            v = getattr(values, f.name)
        if (text := value_problem(hints.get(f.name), f, v)) is not None:
            out.append(f"{prefix}{f.name}={v!r} is invalid; valid: {text}")
    return out


def unknown_keys(cls: type, node: dict, prefix: str, what: str, extra: tuple = ()) -> list[str]:
    """``<prefix><key> is not a key of <what>; valid keys: ...`` for every key of ``node`` that ``cls`` lacks."""
    allowed = {f.name for f in dataclasses.fields(cls)} | set(extra)
    shown = ", ".join(sorted(allowed - {"hydra", "output_dir"}))  # Hydra's own keys: allowed, not worth listing
    return [f"{prefix}{k} is not a key of {what}; valid keys: {shown}" for k in node if k not in allowed]


def config_node(cls: type, name: str | None = None, module: str | None = None, first: list | None = None,
                skip: tuple = ()) -> type:
    """The Hydra schema of the dataclass ``cls``: one key per field with the field's config default (its
    ``param(config=...)``, else its default; ``ABSENT`` fields are left out; a field whose type is itself a
    dataclass becomes a nested schema), values typed ``Any``. ``first``: ``(name, type, field)`` entries that
    come before the fields (a compressor's or a task's ``name``); ``skip``: fields left out. The class is made importable by name from
    ``module`` (submitit pickles composed configs), once: a second call returns the same class."""
    module = module or cls.__module__
    name = name or f"{cls.__name__}Config"
    made = getattr(sys.modules[module], name, None)
    if getattr(made, "__schema__", None) is cls:
        return made
    hints = typing.get_type_hints(cls)
    fields: list[tuple] = list(first or [])
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        sub = hints.get(f.name)
        if dataclasses.is_dataclass(sub):
            node = config_node(sub, module=module)
            fields.append((f.name, node, field(default_factory=node)))
            continue
        conf = f.metadata.get("config", dataclasses.MISSING)
        if conf is ABSENT:
            continue
        if conf is not dataclasses.MISSING:
            default = {"default": conf}
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = {"default_factory": f.default_factory}
        else:
            default = {"default": "???" if f.default is dataclasses.MISSING else f.default}
        fields.append((f.name, Any, field(**default)))
    node = dataclasses.make_dataclass(name, fields)
    node.__module__ = module
    node.__doc__ = cls.__doc__
    node.__schema__ = cls
    setattr(sys.modules[module], node.__name__, node)
    return node


# ---- local paths ------------------------------------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def looks_local(name: str) -> bool:
    """A path on this machine rather than a hub id (``org/name``: one slash at most, no leading ./ or /)."""
    if name.startswith(("/", ".", "~")) or os.path.exists(os.path.expanduser(name)):
        return True
    return not _HUB_ID.match(name)


def check_model_path(name: str, key: str = "model.name_or_path") -> str | None:
    """Why a model name cannot load, if it is a local path that is missing or not a model folder."""
    if not looks_local(name):
        return None
    path = Path(os.path.expanduser(name))
    if not path.exists():
        return (f"{key}={name!r} is a local path that does not exist; valid: an existing model folder "
                f"(with config.json) or a hub id such as org/name")
    if not path.is_dir():
        return f"{key}={name!r} is a file, not a folder; valid: a model folder (with config.json) or a hub id"
    if not (path / "config.json").exists():
        return f"{key}={name!r} has no config.json; valid: a model folder saved by save_pretrained or a hub id"
    return None


_TEXT_OK: dict[tuple, str | None] = {}  # (path, size, mtime_ns, decode_errors) -> problem or None


def text_file_problem(path: str, decode_errors: str = "strict") -> str | None:
    """Why ``path`` is not readable UTF-8 text (None if it is). Binary files (NUL bytes) and invalid UTF-8 are
    refused unless ``decode_errors='replace'``. Results are remembered by (path, size, mtime)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, decode_errors)
    if key in _TEXT_OK:
        return _TEXT_OK[key]
    problem = None
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                if decode_errors == "strict":
                    if (i := chunk.find(b"\0")) >= 0:
                        problem = f"{path} is not text: it has a NUL byte at byte {offset + i} (a binary file?)"
                        break
                    try:
                        dec.decode(chunk)
                    except UnicodeDecodeError as e:
                        problem = f"{path} is not UTF-8 text: invalid byte at byte {offset + e.start}"
                        break
                offset += len(chunk)
            if problem is None and decode_errors == "strict":
                try:
                    dec.decode(b"", final=True)
                except UnicodeDecodeError:
                    problem = f"{path} is not UTF-8 text: it ends inside a multi-byte character"
    except OSError as e:
        problem = f"cannot read {path}: {e.strerror}"
    _TEXT_OK[key] = problem
    return problem


def blank_file(path: str) -> bool:
    """True if the file is empty or holds only whitespace (read until the first other byte)."""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                if chunk.strip():
                    return False
    except OSError:
        return False  # text_file_problem names it
    return True


def text_files(paths: Any, key: str = "data.paths") -> tuple[list[str], list[str]]:
    """(files, problems) of a ``paths`` setting: every pattern must match at least one entry, and every match
    must be a regular file (a glob's matches that are folders are named, not skipped silently)."""
    if isinstance(paths, str):
        paths = [paths]
    files: set[str] = set()
    problems = []
    for pat in paths:
        pat = os.path.expanduser(str(pat))
        hits = sorted(glob.glob(pat)) if glob.has_magic(pat) else ([pat] if os.path.exists(pat) else [])
        if not hits:
            problems.append(f"{key}: {pat!r} matches no file; valid: existing text files or globs that match some")
            continue
        dirs = [h for h in hits if os.path.isdir(h)]
        if dirs:
            problems.append(f"{key}: {pat!r} matches folder(s) {dirs[:3]}; valid: text files (use a glob such as "
                            f"'{dirs[0].rstrip(os.sep)}/*.txt')")
        files |= {h for h in hits if os.path.isfile(h)}
        odd = [h for h in hits if not os.path.isdir(h) and not os.path.isfile(h)]
        if odd:
            problems.append(f"{key}: {pat!r} matches {odd[:3]}, which are not regular files; valid: text files")
    return sorted(files), problems
