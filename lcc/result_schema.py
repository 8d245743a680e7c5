"""What ``lcc.reduce`` reads of a job's ``result.json``, checked in one place before any of it is used.

``problem(res)`` returns why a result is not one lcc writes (None if it is): every field that reduce, the task
report and the tidy curves file read, with its type: the identity (``model``, ``data``, ``compressor``, ``level``
strings, ``ctx`` an integer in 1..2^31), ``config`` (a mapping, nested at most ``MAX_DEPTH`` deep), the summary
numbers of the job's metric family (``lcc.metrics.registry.family_of``: numbers or null; lm-eval's ``matching`` a
boolean), and the body of its family: KL jobs' ``curve`` (bins holding numbers), synthetic tasks' ``by_depth``
(rows holding numbers), lm-eval's ``lm_eval`` (rows naming task and metric, with numbers). A result that fails is
listed as ``malformed`` with this reason and enters no table; the others' tables are written as usual.
"""
from __future__ import annotations

import math
from typing import Any

from lcc.metrics import registry
from lcc.names import BIN_KEYS

MAX_CTX = 2 ** 31
MAX_DEPTH = 64
#: the bodies reduce reads: key -> the metric family that requires it
BODIES = {"curve": "kl", "by_depth": "synthetic", "lm_eval": "lm_eval"}


def _num(v: Any, optional: bool = True) -> bool:
    if v is None:
        return optional
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _depth(o: Any) -> int:
    """Nesting depth of dicts and lists, without recursion."""
    deepest, stack = 0, [(o, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack += [(v, d + 1) for v in (x.values() if isinstance(x, dict) else x)]
    return deepest


def _numbers(where: str, row: Any, keys: list[str], required: tuple[str, ...] = ()) -> str | None:
    if not isinstance(row, dict):
        return f"{where} is not a mapping but {type(row).__name__}"
    for k in required:
        if not _num(row.get(k), optional=False):
            return f"{where}[{k!r}] is missing or not a number: {row.get(k)!r}"
    for k in keys:
        if k in row and not _num(row[k]):
            return f"{where}[{k!r}]={row[k]!r} is not a number"
    return None


def problem(res: Any) -> str | None:
    """Why ``res`` (a parsed result.json) is not a result lcc writes; None if it is."""
    if not isinstance(res, dict):
        return f"not a JSON object but {type(res).__name__}"
    if not isinstance(res.get("status", ""), str):
        return f"'status' is not a string: {res.get('status')!r}"
    if res.get("status") != "ok":
        return None
    if "task" in res and not isinstance(res["task"], str):
        return f"'task' is not a string: {res['task']!r}"
    family = registry.family_of(res)
    if not isinstance(family, str):
        return f"'metrics' is not a string: {family!r}"
    # the body its metric family requires, and every body the result carries (whatever it declares)
    body = [(k, list) for k, required in BODIES.items() if required == family or k in res]
    for key, typ in (("config", dict), ("summary", dict), *body, ("level", str), ("compressor", str)):
        if not isinstance(res.get(key), typ):
            return f"{key!r} is missing or not a {typ.__name__}"
    ctx = res.get("ctx")
    if not isinstance(ctx, int) or isinstance(ctx, bool):
        return "'ctx' is missing or not an integer"
    if not 1 <= ctx <= MAX_CTX:
        return f"'ctx'={ctx} is out of range; valid: 1..2^31"
    for key in ("model", "data"):
        if key in res and not isinstance(res[key], str):
            return f"{key!r} is not a string: {res[key]!r}"
        if key not in res and not isinstance(res["config"].get(key), dict):
            return f"{key!r} is missing (neither in the result nor in its config)"
    if _depth(res["config"]) > MAX_DEPTH:
        return f"'config' is nested deeper than {MAX_DEPTH} levels"
    summary = res["summary"]
    flags = [k for k in registry.summary_keys(family) if k == "matching"]
    if (why := _numbers("summary", summary, [k for k in registry.summary_keys(family) if k not in flags])):
        return why
    for k in flags:
        if summary.get(k) is not None and not isinstance(summary[k], bool):
            return f"summary[{k!r}]={summary[k]!r} is not a boolean"
    if "curve" in res:
        for i, b in enumerate(res["curve"]):
            if (why := _numbers(f"curve[{i}]", b, BIN_KEYS, required=("bin_lo", "bin_hi", "log2_pos"))):
                return why
    if "by_depth" in res:
        for i, r in enumerate(res["by_depth"]):
            if (why := _numbers(f"by_depth[{i}]", r, registry.summary_keys("synthetic"),
                                required=("depth", "n_prompts"))):
                return why
    if "lm_eval" in res:
        if not res["lm_eval"]:
            return "'lm_eval' holds no rows"
        for i, r in enumerate(res["lm_eval"]):
            where = f"lm_eval[{i}]"
            if not isinstance(r, dict):
                return f"{where} is not a mapping but {type(r).__name__}"
            for k in ("lm_task", "metric"):
                if not isinstance(r.get(k), str):
                    return f"{where}[{k!r}] is missing or not a string"
            if (why := _numbers(where, r, ["dense_se", "compressed_se", "delta", "rel_delta"],
                                required=("dense", "compressed"))):
                return why
            if not isinstance(r.get("matching"), bool):
                return f"{where}['matching'] is missing or not a boolean"
    return None
