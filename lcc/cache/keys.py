"""What cache keys are made of besides a job's config: where numbers were computed, which weights, which
token ids, which code and library versions."""
from __future__ import annotations

import hashlib
import inspect
import platform
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import lcc
from lcc.models import smollm2_gguf


def library_versions() -> dict:
    """The versions an entry's numbers depend on (a subset of ``lcc.versions()``: not python, nor the GPU,
    which ``device_id`` covers)."""
    v = lcc.versions()
    return {k: v[k] for k in ("lcc", "torch", "transformers")}


def device_id(device: torch.device) -> str:
    """Where numbers were computed: kernels differ between GPU models, CPU architectures and (on CPU)
    thread counts, and a dense reference must match the compressed pass bit for bit (none -> KL 0)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{platform.machine()}:threads={torch.get_num_threads()}"


def model_identity(cfg_model: DictConfig, model: Any) -> dict:
    """The model config plus what identifies its weights beyond the config."""
    ident: dict[str, Any] = {"config": OmegaConf.to_container(cfg_model, resolve=True)}
    if cfg_model.kind == "gguf":
        st = smollm2_gguf().stat()
        ident["gguf"] = f"{smollm2_gguf().name}-{st.st_size}-{int(st.st_mtime)}"
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        ident["commit"] = commit
    return ident


def tokens_sha256(ids: torch.Tensor) -> str:
    ids = ids.detach().cpu().to(torch.int64).contiguous()
    return hashlib.sha256(str(list(ids.shape)).encode() + ids.numpy().tobytes()).hexdigest()[:32]


def source_fingerprint(*modules: str, functions: tuple = ()) -> str:
    """sha256 over the source files of the given lcc modules/packages (relative to the lcc package,
    e.g. ``"models.py"``, ``"compressors"``) and the source of the given functions: editing the code that
    produced an entry invalidates it."""
    root = Path(lcc.__file__).resolve().parent
    h = hashlib.sha256()
    for m in modules:
        p = root / m
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    for fn in functions:
        h.update(f"{fn.__module__}.{fn.__qualname__}".encode() + b"\0" + inspect.getsource(fn).encode() + b"\0")
    return h.hexdigest()[:16]
