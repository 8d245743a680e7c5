"""Every key of a composed job config, checked before anything is launched and without loading a model.

``validate(cfg)`` raises one :class:`lcc.ConfigError` listing every bad key of the job, each as
``<key>=<value> is invalid; valid: <choices>``. The lcc sweeper calls it for every job of a multirun before
launching any (``hydra_plugins/lcc_sweeper``), a single run (``python -m lcc.sweep`` without ``-m``) calls it
from a Hydra callback before its job folder exists, and ``lcc.job.run`` calls it again (library use).

What is checked: every top-level key, ``ctx``, ``model`` (by kind; a local ``name_or_path`` that does not
exist is named as such, a hub id stays allowed), ``data`` and ``calib.data`` (by kind; local text files must
exist, be files, and be UTF-8 text without NUL bytes unless ``data.decode_errors=replace``), ``calib``,
``logger``, ``cache`` and ``compressor`` (the compressor's own ``check`` plus ``targets``). A key the schema
does not know (``+sede=1``) is an error too. Every boolean must be a real YAML boolean: ``no``, ``'false'``,
``0`` are refused (``bool('false')`` is True: ``model.trust_remote_code='false'`` would run a model's code).

Imports stay light (no transformers, no datasets); ``lcc.compressors`` (torch) only for the compressor check.
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from lcc import ConfigError

#: Top-level keys that change neither a job's numbers nor where it runs: left out of the config hash
#: (lcc.job.config_hash) and, with every key under them, out of the job folder's name
#: (hydra.job.config.override_dirname.exclude_keys in lcc/conf/sweep.yaml, via ``override_exclude_keys``).
#: ``device``, ``dtype``, ``chunk_size``, ``model.device_map`` are NOT volatile: they change numbers.
VOLATILE_KEYS = ("output_dir", "logger", "resume", "cache")

DEVICES = "auto, cpu, cuda, cuda:<N>"
MODEL_KINDS = ("gguf", "tiny", "tiny_arch", "hf")
DATA_KINDS = ("pydoc", "hf", "text")
LOGGER_KINDS = ("wandb", "none")
WANDB_MODES = ("offline", "online")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
DECODE_ERRORS = ("strict", "replace")
MAX_SEED = 2 ** 63 - 1

_TOP = {"model", "data", "ctx", "compressor", "calib", "logger", "seed", "n_docs", "device", "dtype",
        "chunk_size", "allow_long_context", "resume", "cache", "output_dir", "hydra", "task"}
_CACHE_KEYS = ("enabled", "dir", "dense", "compressed")
_LOGGER_KEYS = {"none": ("kind",), "wandb": ("kind", "project", "entity", "mode", "group", "tags", "timeout_s")}
_MODEL_KEYS = {"gguf": ("name", "kind", "package", "max_context"),
               "tiny": ("name", "kind", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "intermediate_size",
                        "max_position_embeddings", "max_context", "seed", "attn_implementation"),
               "tiny_arch": ("name", "kind", "arch", "seed", "max_position_embeddings", "max_context",
                             "attn_implementation"),
               "hf": ("name", "kind", "name_or_path", "attn_implementation", "trust_remote_code", "device_map",
                      "max_context")}
_DATA_KEYS = {"pydoc": ("name", "kind", "add_bos"),
              "hf": ("name", "kind", "path", "config_name", "data_files", "split", "text_field", "join_docs",
                     "add_bos"),
              "text": ("name", "kind", "paths", "join_docs", "add_bos", "decode_errors")}
_MISSING_HINT = {"model.name_or_path": "model=hf needs model.name_or_path=<hub id (org/name) or local folder>",
                 "data.paths": "data=text needs data.paths='[<file or glob>, ...]'",
                 "calib.data.paths": "calib.data.kind=text needs calib.data.paths='[<file or glob>, ...]'"}


def override_exclude_keys() -> list[str]:
    """Override keys left out of a job folder's name: every volatile key and every key under one (the
    logger's and cache's keys as the schema above knows them), plus two config groups that hold no job key:
    ``experiment`` (it only sets a grid, whose values are the jobs' own overrides; tests/test_validate.py checks
    this) and ``launcher`` (a preset of hydra.launcher: how jobs are submitted)."""
    keys = ["experiment", "launcher"]
    for k in VOLATILE_KEYS:
        keys.append(k)
        if k == "logger":
            keys += sorted({f"logger.{s}" for ks in _LOGGER_KEYS.values() for s in ks})
        if k == "cache":
            keys += [f"cache.{s}" for s in _CACHE_KEYS]
    return keys


class Problems(list):
    """The bad keys of one job, one line each."""

    def bad(self, key: str, value: Any, valid: str, why: str = "is invalid") -> None:
        self.append(f"{key}={value!r} {why}; valid: {valid}")


# ---- value checks on plain Python values (after OmegaConf resolution) -------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(p: Problems, node: dict, prefix: str, key: str, lo: int, hi: int | None = None,
         optional: bool = False) -> None:
    if key not in node:
        return
    v = node[key]
    if optional and v is None:
        return
    if not (_is_int(v) and v >= lo and (hi is None or v <= hi)):
        rng = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{'2^63-1' if hi == MAX_SEED else hi}"
        p.bad(f"{prefix}{key}", v, rng + (" or null" if optional else ""))


def _bool(p: Problems, node: dict, prefix: str, key: str) -> None:
    if key in node and not isinstance(node[key], bool):
        p.bad(f"{prefix}{key}", node[key], "true or false (a YAML boolean; strings such as 'no' or 'false' and "
                                           "numbers are refused)")


def _choice(p: Problems, node: dict, prefix: str, key: str, choices: tuple, optional: bool = False) -> None:
    if key not in node or (optional and node[key] is None):
        return
    if node[key] not in choices or isinstance(node[key], bool):
        p.bad(f"{prefix}{key}", node[key], f"one of {', '.join(choices)}" + (" or null" if optional else ""))


def _str(p: Problems, node: dict, prefix: str, key: str, optional: bool = False) -> None:
    if key not in node or (optional and node[key] is None):
        return
    v = node[key]
    if not isinstance(v, str) or not v:
        p.bad(f"{prefix}{key}", v, "a non-empty string" + (" or null" if optional else ""))


def _str_list(p: Problems, node: dict, prefix: str, key: str, optional: bool = False,
              scalar_ok: bool = True) -> None:
    if key not in node or (optional and node[key] is None):
        return
    v = node[key]
    ok = (scalar_ok and isinstance(v, str) and v) or (
        isinstance(v, list) and all(isinstance(x, str) and x for x in v))
    if not ok:
        p.bad(f"{prefix}{key}", v, "a list of non-empty strings" + (" or null" if optional else ""))


def _known(p: Problems, node: dict, prefix: str, allowed: tuple | set, what: str) -> None:
    shown = sorted(set(allowed) - {"hydra", "output_dir"})  # Hydra's own keys: allowed, not worth listing
    for k in node:
        if k not in allowed:
            p.append(f"{prefix}{k} is not a key of {what}; valid keys: {', '.join(shown)}")


# ---- local paths ----------------------------------------------------------------------------------------
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
    import codecs

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


# ---- groups ----------------------------------------------------------------------------------------------
def _model(p: Problems, m: dict) -> None:
    pre = "model."
    kind = m.get("kind")
    if kind not in MODEL_KINDS:
        p.bad("model.kind", kind, f"one of {', '.join(MODEL_KINDS)} (or model=<preset>)")
        return
    _known(p, m, pre, _MODEL_KEYS[kind], f"model kind {kind}")
    _str(p, m, pre, "name")
    _int(p, m, pre, "max_context", 2, optional=True)
    if kind == "gguf":
        from lcc.models import SMOLLM2_PACKAGE

        if m.get("package") != SMOLLM2_PACKAGE:
            p.bad("model.package", m.get("package"), repr(SMOLLM2_PACKAGE) + " (the only bundled GGUF model)")
        else:
            from lcc.models import smollm2_gguf
            try:
                smollm2_gguf()
            except ConfigError as e:
                p.append(str(e))
    elif kind == "tiny":
        for k in ("hidden_size", "n_layers", "n_heads", "n_kv_heads", "intermediate_size",
                  "max_position_embeddings"):
            _int(p, m, pre, k, 1)
        _int(p, m, pre, "seed", 0, MAX_SEED)
        _choice(p, m, pre, "attn_implementation", ("eager", "sdpa"))
        h, nh, nkv = m.get("hidden_size"), m.get("n_heads"), m.get("n_kv_heads")
        if all(_is_int(x) and x > 0 for x in (h, nh, nkv)):
            if h % nh:
                p.bad("model.n_heads", nh, f"a divisor of model.hidden_size ({h})")
            elif nh % nkv:
                p.bad("model.n_kv_heads", nkv, f"a divisor of model.n_heads ({nh})")
    elif kind == "tiny_arch":
        from lcc.archs import ARCHS

        _choice(p, m, pre, "arch", tuple(ARCHS))
        _int(p, m, pre, "seed", 0, MAX_SEED)
        _int(p, m, pre, "max_position_embeddings", 1)
        _choice(p, m, pre, "attn_implementation", ATTN_IMPLEMENTATIONS, optional=True)
    else:
        name = m.get("name_or_path")
        if not isinstance(name, str) or not name:
            p.bad("model.name_or_path", name, "a hub id (org/name) or a local model folder")
        elif (why := check_model_path(name)):
            p.append(why)
        _bool(p, m, pre, "trust_remote_code")
        _choice(p, m, pre, "attn_implementation", ATTN_IMPLEMENTATIONS, optional=True)
        dm = m.get("device_map")
        if dm is not None and not isinstance(dm, dict) and not (
                isinstance(dm, str) and (dm in DEVICE_MAPS or dm == "cpu" or re.fullmatch(r"cuda(:\d+)?", dm))):
            p.bad("model.device_map", dm, f"null, one of {', '.join(DEVICE_MAPS)}, cpu, cuda:<N>, or a mapping "
                                          f"module -> device")


def _data(p: Problems, d: dict, prefix: str) -> None:
    kind = d.get("kind")
    if kind not in DATA_KINDS:
        p.bad(f"{prefix}kind", kind, f"one of {', '.join(DATA_KINDS)}")
        return
    _known(p, d, prefix, _DATA_KEYS[kind], f"data kind {kind}")
    _str(p, d, prefix, "name")
    _bool(p, d, prefix, "add_bos")
    _bool(p, d, prefix, "join_docs")
    if kind == "hf":
        for k in ("path", "split", "text_field"):
            if k not in d:
                p.append(f"{prefix}{k} is missing; valid: a non-empty string (data kind hf)")
            _str(p, d, prefix, k)
        _str(p, d, prefix, "config_name", optional=True)
        _str_list(p, d, prefix, "data_files", optional=True)
        path = d.get("path")
        if isinstance(path, str) and path.startswith(("/", "./", "../", "~")) and not os.path.exists(
                os.path.expanduser(path)):
            p.append(f"{prefix}path={path!r} is a local path that does not exist; valid: an existing dataset "
                     f"folder or file, a hub id (org/name) or a builder name (text, json, parquet, ...)")
    elif kind == "text":
        _choice(p, d, prefix, "decode_errors", DECODE_ERRORS)
        paths = d.get("paths")
        ok = (isinstance(paths, str) and paths) or (
            isinstance(paths, list) and paths and all(isinstance(x, str) and x for x in paths))
        if not ok:
            p.bad(f"{prefix}paths", paths, "a non-empty list of files or globs, e.g. '[/corpus/*.txt]'")
            return
        files, problems = text_files(paths, f"{prefix}paths")
        p += problems
        errors = d.get("decode_errors", "strict")
        if errors in DECODE_ERRORS:
            for f in files:
                if (why := text_file_problem(f, errors)):
                    p.append(f"{prefix}paths: {why}; valid: UTF-8 text files (or {prefix}decode_errors=replace "
                             f"to read them with replacement characters)")
        if files and all(blank_file(f) for f in files):
            p.append(f"{prefix}paths: {files[:3]} hold{'s' if len(files) == 1 else ''} no text (empty or whitespace "
                     f"only); valid: text files with some text")


def _compressor(p: Problems, c: dict) -> None:
    from lcc import compressors

    try:
        compressors.validate(c)
    except ConfigError as e:
        p.append(str(e))


def _container(cfg: DictConfig, key: str, p: Problems) -> Any:
    """The resolved plain value of ``cfg[key]`` (None and a problem if it does not resolve)."""
    try:
        v = cfg[key]
        return OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
    except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve is a config error
        p.append(f"{key} does not resolve: {type(e).__name__}: {str(e).splitlines()[0]}")
        return None


def _missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys whose value is ``???``, found without resolving anything (OmegaConf.missing_keys resolves
    interpolations and raises on ``name: ${.name_or_path}`` when name_or_path is missing)."""
    out = []
    for k in node:
        child = node._get_node(k)
        if child is None:
            continue
        if child._is_missing() and not child._is_interpolation():
            out.append(f"{prefix}{k}")
        elif isinstance(child, DictConfig) and not child._is_interpolation():
            out += _missing_keys(child, f"{prefix}{k}.")
    return out


def problems(cfg: DictConfig) -> list[str]:
    """Every problem of a composed job config (empty if it is valid)."""
    p = Problems()
    # Hydra's own node (and output_dir, which points into it) are Hydra's business, and not resolvable
    # before a job runs
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("hydra", "output_dir")])
    for k in _missing_keys(cfg):
        p.append(f"{k} is missing (???); valid: " + _MISSING_HINT.get(k, "a value on the command line: " + k + "=..."))
    if p:
        return p
    _known(p, cfg, "", _TOP, "lcc's config")
    top = {k: _container(cfg, k, p) for k in cfg if k in _TOP}
    if p:
        return p

    _int(p, top, "", "seed", 0, MAX_SEED)
    _int(p, top, "", "n_docs", 1)
    _int(p, top, "", "chunk_size", 1)
    _bool(p, top, "", "allow_long_context")
    _bool(p, top, "", "resume")
    dev = top.get("device")
    if not (isinstance(dev, str) and (dev in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", dev))):
        p.bad("device", dev, DEVICES)
    from lcc.models import DTYPES
    _choice(p, top, "", "dtype", ("auto", *DTYPES))

    ctx = top.get("ctx")
    if isinstance(ctx, dict):
        _known(p, ctx, "ctx.", ("tokens",), "ctx")
        _int(p, ctx, "ctx.", "tokens", 2)
    else:
        p.bad("ctx", ctx, "ctx=1k,2k,...,128k or ctx.tokens=<N>")

    model = top.get("model")
    if isinstance(model, dict):
        _model(p, model)
    else:
        p.bad("model", model, "a model config (model=smollm2_135m, tiny, hf, ...)")
    if isinstance(ctx, dict) and isinstance(model, dict) and _is_int(ctx.get("tokens")) and not p:
        why = context_problem(ctx["tokens"], model.get("max_context"), top.get("allow_long_context"),
                              model.get("name"))
        if why:
            p.append(why)

    data = top.get("data")
    if isinstance(data, dict):
        _data(p, data, "data.")
    else:
        p.bad("data", data, "a data config (data=pydoc, text, wikitext2, ...)")

    calib = top.get("calib")
    if isinstance(calib, dict):
        _known(p, calib, "calib.", ("data", "n_samples", "seqlen", "seed"), "calib")
        _int(p, calib, "calib.", "n_samples", 1)
        _int(p, calib, "calib.", "seqlen", 1)
        _int(p, calib, "calib.", "seed", 0, MAX_SEED)
        if isinstance(calib.get("data"), dict):
            _data(p, calib["data"], "calib.data.")
        else:
            p.bad("calib.data", calib.get("data"), "a data config (calib=pydoc, c4, wikitext2, pg19)")
    else:
        p.bad("calib", calib, "a calibration config (calib=pydoc, c4, wikitext2, pg19)")

    lg = top.get("logger")
    if isinstance(lg, dict) and lg.get("kind") in LOGGER_KINDS:
        _known(p, lg, "logger.", _LOGGER_KEYS[lg["kind"]], f"logger kind {lg['kind']}")
        if lg["kind"] == "wandb":
            _choice(p, lg, "logger.", "mode", WANDB_MODES)
            _str(p, lg, "logger.", "project")
            _str(p, lg, "logger.", "entity", optional=True)
            _str(p, lg, "logger.", "group", optional=True)
            _str_list(p, lg, "logger.", "tags", scalar_ok=False)
            t = lg.get("timeout_s")
            if "timeout_s" in lg and not (isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0):
                p.bad("logger.timeout_s", t, "a number of seconds > 0")
    else:
        p.bad("logger.kind", lg.get("kind") if isinstance(lg, dict) else lg, f"one of {', '.join(LOGGER_KINDS)}")

    cache = top.get("cache")
    if cache is not None:
        if not isinstance(cache, dict):
            p.bad("cache", cache, "a mapping with " + ", ".join(_CACHE_KEYS))
        else:
            _known(p, cache, "cache.", _CACHE_KEYS, "cache")
            _bool(p, cache, "cache.", "enabled")
            _bool(p, cache, "cache.", "dense")
            if "compressed" in cache and not (cache["compressed"] == "auto" or isinstance(cache["compressed"], bool)):
                p.bad("cache.compressed", cache["compressed"], "auto (calibrated compressors and masking pruners), "
                                                               "true (every cacheable compressor), false")
            d = cache.get("dir")
            if d is not None:
                if not isinstance(d, str) or not d:
                    p.bad("cache.dir", d, "null ($LCC_CACHE/refs) or a folder")
                elif os.path.exists(os.path.expanduser(d)) and not os.path.isdir(os.path.expanduser(d)):
                    p.bad("cache.dir", d, "null ($LCC_CACHE/refs) or a folder", why="is a file, not a folder")

    comp = top.get("compressor")
    if isinstance(comp, dict):
        _compressor(p, comp)
    else:
        p.bad("compressor", comp, "a compressor config (compressor=quant, magnitude, ...)")

    task = top.get("task")  # absent in configs from before the task group: task=kl
    if task is not None and not isinstance(task, dict):
        p.bad("task", task, "a task config (task=kl, passkey, niah, vt, lm_eval)")
    elif task is not None and not p:  # its parameters, and what it needs of ctx (lcc/tasks/)
        from lcc import tasks
        try:
            tasks.validate(cfg)
        except ConfigError as e:
            p.append(str(e))
    return list(p)


def context_problem(ctx: int, max_ctx: int | None, allow_long: Any, model_name: Any) -> str | None:
    if max_ctx and ctx > max_ctx and allow_long is not True:
        return (f"ctx={ctx} tokens exceeds model {model_name}'s trained context of {max_ctx}; "
                f"valid: ctx <= {max_ctx}, or allow_long_context=true")
    return None


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem of the job config ``cfg``."""
    found = problems(cfg)
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"{len(found)} invalid settings:\n" + "\n".join(f"  - {x}" for x in found))


class ValidateCallback(Callback):
    """Hydra callback (``hydra.callbacks.lcc_validate`` in sweep.yaml): a single run is validated before Hydra
    creates its folder, so a bad value writes nothing. (A multirun is validated by the lcc sweeper.)
    Hydra turns an exception raised by a callback into a warning and goes on, so a bad config prints its
    message and exits with status 1 (SystemExit) instead."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        import sys

        found = problems(config)
        if found:
            sys.stderr.write("invalid config; nothing was launched:\n" + "\n".join(f"  {x}" for x in found) + "\n")
            raise SystemExit(1)
