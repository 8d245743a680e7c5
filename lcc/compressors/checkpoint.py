"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

``compressor=checkpoint``: a compressed checkpoint someone will serve (a local folder, a hub id or a GGUF file)
as the compressed side. The job evaluates the dense model first (its reference cached as for any compressor),
then ``compress`` loads the checkpoint *in the dense model's place*: the dense model's parameter storage is
released first, the checkpoint is loaded by transformers (``from_pretrained``; a GGUF file is dequantized by
transformers' GGUF loader; quantized layers of other methods are dequantized with transformers'
``model.dequantize()``) and its tensors become the model's parameters, so one model is resident at a time.

Before any work (``check_targets``, ``check_inputs``): the checkpoint has the dense model's architecture and
shapes (its config), and its tokenizer gives the same token ids as the dense model's on the job's own inputs
(windows or prompts); otherwise a ConfigError naming the first difference. The level names the checkpoint and
its quantization (method, bits, group size): ``<name> gguf:Q4_0`` or ``<name> compressed-tensors:w4g128``.

What is evaluated are the checkpoint's weights as transformers dequantizes them, in the job's dtype: the
quantization of activations that some schemes declare (W8A8, FP8 dynamic) is not applied (``compress`` reports
it in ``activations``); lcc's ``quant_wa`` simulates activation quantization.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lcc import ConfigError
from lcc.compressors.base import Compressor, Targets, bits_fingerprint, param

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def path_problem(path: Any) -> str | None:
    """Why ``path`` is not a checkpoint (None if it may be one), without loading anything."""
    valid = "a checkpoint: a local folder with config.json, a .gguf file, or a hub id org/name"
    if not isinstance(path, str) or not path:
        return f"path={path!r} is invalid; valid: {valid}"
    p = Path(os.path.expanduser(path))
    if p.exists():
        if p.is_file():
            if p.suffix.lower() != ".gguf":
                return f"path={path!r} is a file but not a GGUF file (.gguf); valid: {valid}"
            with open(p, "rb") as f:
                if f.read(4) != b"GGUF":
                    return f"path={path!r} does not start with the GGUF magic: not a GGUF file; valid: {valid}"
            return None
        if not (p / "config.json").exists():
            return f"path={path!r} is a folder without config.json: not a checkpoint; valid: {valid}"
        return None
    if path.startswith((".", "/", "~")) or not _HUB_ID.match(path):
        return f"path={path!r} does not exist and is not a hub id; valid: {valid}"
    return None


def source(path: str) -> tuple[str, dict]:
    """(what ``from_pretrained`` takes, its extra keywords): a GGUF file is its folder plus ``gguf_file``."""
    p = Path(os.path.expanduser(path))
    if p.is_file():
        return str(p.parent), {"gguf_file": p.name}
    return (str(p) if p.exists() else path), {}


def gguf_types(path: str) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF file holds."""
    import gguf

    return dict(Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors))


def describe(path: str) -> dict[str, Any]:
    """The checkpoint's quantization, read from its files (no weights loaded): method, bits, group size,
    activations."""
    p = Path(os.path.expanduser(path))
    if p.is_file():
        types = gguf_types(str(p))
        weights = {k: v for k, v in types.items() if k not in ("F32",)}
        main = max(weights, key=weights.get) if weights else "F32"
        return {"method": "gguf", "type": main, "tensor_types": types}
    if p.exists():
        cfg = json.loads((p / "config.json").read_text())
    else:  # a hub id: the real path (network)
        from transformers import AutoConfig
        cfg = AutoConfig.from_pretrained(path).to_dict()
    q = cfg.get("quantization_config") or cfg.get("compression_config")
    if not q:
        return {"method": "none"}
    method = q.get("quant_method", "unknown")
    out: dict[str, Any] = {"method": method}
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        g = next(iter(groups.values()), {}) if groups else {}
        w, a = g.get("weights") or {}, g.get("input_activations")
        out.update(bits=w.get("num_bits"), group_size=w.get("group_size"), strategy=w.get("strategy"),
                   type=w.get("type"), symmetric=w.get("symmetric"), format=q.get("format"),
                   activations=(f"{a.get('type')}{a.get('num_bits')}" if a else None))
    else:
        out.update(bits=q.get("bits") or (4 if q.get("load_in_4bit") else 8 if q.get("load_in_8bit") else None),
                   group_size=q.get("group_size"), activations=q.get("activation_scheme"))
    return out


def level_of(path: str, d: dict) -> str:
    name = Path(path).name if Path(os.path.expanduser(path)).exists() else path
    if d["method"] == "gguf":
        return f"{name} gguf:{d['type']}"
    if d["method"] == "none":
        return f"{name} (not quantized)"
    bits, gs = d.get("bits"), d.get("group_size")
    spec = (f"w{bits}" if bits else "") + (f"g{gs}" if gs else "")
    act = f"a:{d['activations']}" if d.get("activations") else ""
    return " ".join(x for x in (name, f"{d['method']}:{spec}" if spec else d["method"], act) if x)


class Checkpoint(Compressor):
    """A compressed checkpoint (local folder, hub id, GGUF file) evaluated in the dense model's place."""

    name = "checkpoint"
    uses_targets = False
    # the dense output head is kept for the dense logits (tasks, KL): the checkpoint replaces every parameter
    targets: Targets = param(default_factory=lambda: Targets(lm_head=True), doc="(not a parameter)")
    path: str = param("", "the checkpoint: a local folder (config.json), a .gguf file, or a hub id org/name")
    revision: str | None = param(None, "hub revision (branch, tag or commit) of a hub id; null: the default")
    trust_remote_code: bool = param(False, "let transformers run the checkpoint's own code (hub ids)")

    def check(self) -> None:
        if (why := path_problem(self.path)):
            raise ConfigError(why)

    def _desc(self) -> dict:
        if "_description" not in self.__dict__:
            self.__dict__["_description"] = describe(self.path)
        return self.__dict__["_description"]

    def level(self) -> str:
        return level_of(self.path, self._desc())

    def _from_pretrained_kw(self) -> tuple[str, dict]:
        src, kw = source(self.path)
        if self.revision:
            kw["revision"] = self.revision
        kw["trust_remote_code"] = self.trust_remote_code
        return src, kw

    # ---- before any work -----------------------------------------------------------------------
    def check_targets(self, model) -> None:
        """The checkpoint's config has the dense model's architecture and shapes."""
        from transformers import AutoConfig

        src, kw = self._from_pretrained_kw()
        try:
            c = AutoConfig.from_pretrained(src, **kw)
        except Exception as e:  # noqa: BLE001 - any failure: not a loadable checkpoint
            raise ConfigError(f"compressor.path={self.path!r} is not a loadable checkpoint: {type(e).__name__}: "
                              f"{e}") from e
        mine = model.config
        diff = {k: (getattr(mine, k, None), getattr(c, k, None))
                for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "intermediate_size", "vocab_size")
                if getattr(mine, k, None) != getattr(c, k, None)}
        if diff:
            raise ConfigError(f"compressor.path={self.path!r} is not a compressed version of the job's model: its "
                              f"config differs in {diff} (dense, checkpoint)")

    def check_inputs(self, tokenizer, ids: torch.Tensor) -> None:
        """The checkpoint's tokenizer gives the dense tokenizer's ids on the job's own inputs."""
        from transformers import AutoTokenizer

        src, kw = self._from_pretrained_kw()
        try:
            theirs = AutoTokenizer.from_pretrained(src, **kw)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"compressor.path={self.path!r}: cannot load its tokenizer ({type(e).__name__}: "
                              f"{e}); the checkpoint must ship the dense model's tokenizer") from e
        flat = ids.reshape(-1).tolist()
        text = tokenizer.decode(flat)
        a = tokenizer(text, add_special_tokens=False)["input_ids"]
        b = theirs(text, add_special_tokens=False)["input_ids"]
        if a != b or len(tokenizer) != len(theirs):
            i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise ConfigError(
                f"compressor.path={self.path!r} has another tokenizer than the job's model: on the job's own "
                f"inputs ({len(a)} tokens) the ids first differ at token {i} (dense {a[i:i + 3]}, checkpoint "
                f"{b[i:i + 3]}); vocabulary sizes {len(tokenizer)} and {len(theirs)}. The checkpoint must be "
                f"a compressed version of the same model, with its tokenizer")

    # ---- the swap ------------------------------------------------------------------------------
    @torch.no_grad()
    def compress(self, model, calib=None) -> dict[str, Any]:
        from transformers import AutoModelForCausalLM

        desc = self._desc()
        params = dict(model.named_parameters())
        first = next(iter(params.values()))
        dtype, device = first.dtype, first.device
        before = {n: bits_fingerprint(p.data) for n, p in params.items()}
        shapes = {n: tuple(p.shape) for n, p in params.items()}
        for p in params.values():  # one model resident at a time: the dense storage goes before the load
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        gc.collect()
        src, kw = self._from_pretrained_kw()
        log.info("loading checkpoint %s (%s) in the dense model's place", self.path, self.level())
        if desc["method"] == "compressed-tensors":  # transformers decompresses it on load
            from transformers import CompressedTensorsConfig
            kw["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
        ckpt = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw)
        quantizer = getattr(ckpt, "hf_quantizer", None)
        if quantizer is not None and desc["method"] not in ("gguf", "compressed-tensors"):
            try:
                ckpt.dequantize()
            except Exception as e:  # noqa: BLE001
                raise ConfigError(f"compressor.path={self.path!r}: transformers cannot dequantize its "
                                  f"{desc['method']} layers ({type(e).__name__}: {e})") from e
        theirs = dict(ckpt.named_parameters())
        missing = [n for n in params if n not in theirs or not theirs[n].dtype.is_floating_point]
        bad = [n for n in params if n in theirs and tuple(theirs[n].shape) != shapes[n]]
        if missing or bad:
            raise ConfigError(f"compressor.path={self.path!r} does not match the model: parameters missing "
                              f"(or not dequantized) "
                              f"{missing[:5]}, shapes differ {bad[:5]}")
        changed = 0
        for n, p in params.items():
            p.data = theirs[n].data.to(device=device, dtype=dtype)
            changed += bits_fingerprint(p.data) != before[n]
        del ckpt, theirs
        gc.collect()
        if changed == 0:
            raise ConfigError(f"compressor.path={self.path!r} holds exactly the dense model's weights: nothing is "
                              f"compressed. Use compressor=none for the dense baseline")
        return {"checkpoint": self.path, **desc, "tensors": len(params), "changed_tensors": changed,
                "activations_applied": False}
