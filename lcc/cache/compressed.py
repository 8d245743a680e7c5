"""Fingerprinted: editing this file invalidates the cached compressed weights.

Compressed weights: what a compressor changed, stored once per (model, compressor config, calibration,
seed, dtype, device, versions, code) and applied to the freshly loaded dense weights on a hit.

One codec per storage kind a compressor declares (``Compressor.storage()``):

* ``Storage.MASK`` -> :class:`MaskCodec` (encoding ``keep_bits``): one bit per weight of the touched Linears,
  which weights were kept; a hit multiplies the dense weights by it (1/16 of the size of bf16 weights);
* ``Storage.WEIGHTS`` -> :class:`CodesCodec` (encoding ``codes``): the parameters of the touched Linears, weights
  on a grid the compressor recorded (``Compressor.quant_grids()``) as packed integer codes + scales and zero points
  (``lcc.cache.codes``), verified bit for bit at write time, the others as full copies.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from torch import nn

from lcc.cache.keys import device_id, library_versions, model_identity, source_fingerprint, tokens_sha256
from lcc.cache.store import FORMAT, TensorStore, key_of
from lcc.cache import codes
from lcc.cache.codes import pack_bits, unpack_bits
from lcc.compressors import Compressor, QuantGrid, Storage
from lcc.compressors.base import weight_fingerprint
from lcc.registry import Registry

log = logging.getLogger(__name__)


class Codec:
    """How the touched Linears of a compressed model become tensors of an entry, and back."""

    encoding: str
    storage: Storage  # the storage kind it encodes (its name in CODECS)

    def encode(self, lins: dict[str, nn.Linear], grids: dict[str, QuantGrid]
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The entry's tensors and a JSON description of them (stored in meta.json), from the compressed
        ``lins`` and the grids their compressor recorded."""
        raise NotImplementedError

    def load(self, lins: dict[str, nn.Linear], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Any:
        """What ``apply`` needs, from a read entry; raises ValueError (the reason) if the entry does not fit
        ``lins`` or fails a check. Runs before the model is touched, so a bad entry never half-applies."""
        raise NotImplementedError

    def apply(self, lins: dict[str, nn.Linear], loaded: Any) -> None:
        """Turn the dense ``lins`` into the compressed ones (in place)."""
        raise NotImplementedError


def _check_table(tensors: dict[str, torch.Tensor], expected: dict[str, tuple]) -> None:
    """Raise ValueError if the tensors' names, shapes or dtypes (None: uint8 or float32) differ from ``expected``."""
    if set(tensors) != set(expected):
        diff = sorted(set(tensors) ^ set(expected))
        raise ValueError(f"stored tensor names differ from the compressor's target layers ({diff[:3]}...)")
    bad = [k for k, v in tensors.items() if v.shape != expected[k][0]
           or v.dtype != expected[k][1] and not (expected[k][1] is None and v.dtype in (torch.uint8, torch.float32))]
    if bad:
        raise ValueError(f"shape/dtype differ for {bad[:3]}")


class MaskCodec(Codec):
    """One bit per weight (kept or zeroed), applied to the freshly loaded dense weights on a hit."""

    encoding = "keep_bits"
    storage = Storage.MASK

    def encode(self, lins, grids):
        return {f"{n}.weight.keep": pack_bits(lin.weight.detach() != 0) for n, lin in lins.items()}, {}

    def load(self, lins, tensors, info):
        _check_table(tensors, {f"{n}.weight.keep": (torch.Size([(lin.weight.numel() + 7) // 8]), torch.uint8)
                               for n, lin in lins.items()})
        return tensors

    @torch.no_grad()
    def apply(self, lins, loaded):
        for n, lin in lins.items():
            w = lin.weight.data
            # w * True == w, w * False == ±0 (the sign of a zero changes no sum); 4x faster than masked_fill_
            w.mul_(unpack_bits(loaded[f"{n}.weight.keep"], w.shape, w.device))


class CodesCodec(Codec):
    """The compressed parameters: weights on a recorded grid as packed integer codes + scales and zero points
    (``lcc.cache.codes``, e.g. 4.3 bits per weight at w4g128), verified bit for bit when written and decoded on a
    hit; any other parameter, and a weight without a grid or whose codes do not decode to it exactly, as a full
    copy (counted in the entry's ``codec.summary.full_copies``)."""

    encoding = "codes"
    storage = Storage.WEIGHTS

    @staticmethod
    def params(lins) -> dict[str, nn.Parameter]:
        return {f"{n}.{p}": param for n, lin in lins.items() for p, param in lin.named_parameters(recurse=False)}

    def encode(self, lins, grids):
        tensors: dict[str, torch.Tensor] = {}
        linears: dict[str, dict[str, Any]] = {}
        full: list[str] = []
        n_coded = coded_bytes = 0
        for n, lin in lins.items():
            for p, param in lin.named_parameters(recurse=False):
                if p != "weight":
                    tensors[f"{n}.{p}"] = param.detach()
            w = lin.weight.detach()
            enc = codes.encode(w, grids[n]) if n in grids and w.dim() == 2 else None
            if enc is None:
                if n in grids:
                    log.warning("cache: the weights of %s do not decode bit for bit from their %d-bit grid; "
                                "stored as a full copy", n, grids[n].bits)
                full.append(n)
                tensors[f"{n}.weight"] = w
                continue
            t, desc = enc
            tensors.update({f"{n}.weight.{k}": v for k, v in t.items()})
            linears[n] = {**desc, "g_idx": "g_idx" in t, "fingerprint": weight_fingerprint(lin)}
            n_coded += w.numel()
            coded_bytes += codes.nbytes(t)
        if full and linears:
            log.info("cache: %d of %d Linears stored as full copies (no grid or not exact)", len(full), len(lins))
        summary = {"coded": len(linears), "full_copies": len(full),
                   "coded_bits_per_weight": round(8 * coded_bytes / n_coded, 4) if n_coded else None}
        return tensors, {"linears": linears, "summary": summary}

    def load(self, lins, tensors, info):
        coded = info.get("linears", {})
        expected: dict[str, tuple] = {}
        for n, lin in lins.items():
            for p, param in lin.named_parameters(recurse=False):
                if p != "weight" or n not in coded:
                    expected[f"{n}.{p}"] = (param.shape, param.dtype)
            if n in coded:
                exp = codes.expected(coded[n], tuple(lin.weight.shape))
                if coded[n].get("g_idx"):
                    exp["g_idx"] = (torch.Size([lin.weight.shape[1]]), torch.int32)
                expected.update({f"{n}.weight.{k}": v for k, v in exp.items()})
        if set(coded) - set(lins):
            raise ValueError(f"codes of Linears the compressor does not touch: {sorted(set(coded) - set(lins))[:3]}")
        _check_table(tensors, expected)
        loaded = {k: v for k, v in tensors.items() if not any(k.startswith(f"{n}.weight.") for n in coded)}
        for n, desc in coded.items():
            w = lins[n].weight
            t = {k[len(n) + 8:]: v for k, v in tensors.items() if k.startswith(f"{n}.weight.")}
            dec = codes.decode(t, desc, tuple(w.shape), w.dtype, w.device)
            if weight_fingerprint(SimpleNamespace(weight=dec)) != desc["fingerprint"]:
                raise ValueError(f"the decoded weights of {n} differ from the compressed ones (fingerprint)")
            loaded[f"{n}.weight"] = dec
        return loaded

    @torch.no_grad()
    def apply(self, lins, loaded):
        ps = self.params(lins)
        for k, v in loaded.items():
            ps[k].data.copy_(v.to(ps[k].device))


#: the codec of each storage kind (a second codec for a storage kind is an error)
CODECS: Registry[Codec] = Registry("cache codec", name_of=lambda codec: codec.storage)
CODECS.register(MaskCodec())
CODECS.register(CodesCodec())


@dataclass
class Compression:
    """The compress step's result."""

    info: dict[str, Any]  # the compressor's facts
    compress_s: float  # the compression's time (the original one on a cache hit)
    status: str = "off"  # off | uncacheable | recomputed | hit | miss
    key: str | None = None
    cache_s: float | None = None  # time spent in the cache (check, read or write), compression excluded
    weights: dict[str, int] | None = None  # targeted and changed Linears (set by lcc.context.compress_model)


class CompressedCache:
    """One entry of compressed weights of the Linears ``comp`` touches, in the codec of its storage kind."""

    def __init__(self, store: TensorStore, inputs: dict, comp: Compressor, model: nn.Module):
        self.codec = CODECS[comp.storage()]
        self.comp = comp
        self.lins = comp.touched_linears(model)
        # the codec and its code are part of the key: an entry of another codec is never misread
        self.store, self.inputs = store, {**inputs, "encoding": self.codec.encoding,
                                          "codec_code": source_fingerprint("cache/codes.py", "cache/compressed.py")}
        self.key = key_of(self.inputs)
        self.label = f"{comp.name} ({comp.level()})"

    @classmethod
    def for_job(cls, root: Path, cfg: Any, comp: Compressor, model: nn.Module, calib: torch.Tensor | None,
                device: torch.device, dtype: torch.dtype) -> "CompressedCache":
        """Everything the compressed weights depend on (not ctx, n_docs or the evaluation data)."""
        calibrated = comp.needs_calibration()
        inputs = {"entry": "compressed_weights", "format": FORMAT, "model": model_identity(cfg.model, model),
                  "compressor": OmegaConf.to_container(cfg.compressor, resolve=True),
                  "calib": OmegaConf.to_container(cfg.calib, resolve=True) if calibrated else None,
                  "calib_sha256": tokens_sha256(calib) if calibrated and calib is not None else None,
                  "seed": int(cfg.seed), "dtype": str(dtype), "device": device_id(device),
                  "versions": library_versions(), "code": source_fingerprint("models.py", "compressors")}
        return cls(TensorStore(root, "compressed"), inputs, comp, model)

    def get_or_compute(self, compute: Callable[[], tuple[dict, float]]) -> Compression:
        """Apply the entry to the model if a valid one exists, else ``compute()`` -> (facts, seconds) (which
        compresses the model in place) and store the result."""
        loaded: list = []

        def miss():
            log.info("compressing with %s (cache miss, storing as %s)", self.label, self.key[:16])
            info, s = compute()
            info = json.loads(json.dumps(info, default=str))  # as a cache hit would return it
            tensors, codec_info = self.codec.encode(self.lins, self.comp.quant_grids())
            return tensors, {"compress_info": info, "compress_s": s, "codec": codec_info}

        def check(tensors: dict, meta: dict) -> str | None:
            loaded.clear()
            try:
                loaded.append(self.codec.load(self.lins, tensors, meta["facts"].get("codec", {})))
            except ValueError as e:
                return str(e)
            return None

        t = time.perf_counter()
        tensors, meta, hit = self.store.get_or_create(self.key, self.inputs, miss, check)
        facts = meta["facts"]
        if hit:
            self.codec.apply(self.lins, loaded[0])
            loaded.clear()
            log.info("compressed weights of %s from the cache (%s), compression skipped", self.label,
                     self.store.path(self.key))
        cache_s = time.perf_counter() - t - (0.0 if hit else facts["compress_s"])
        return Compression(facts["compress_info"], float(facts["compress_s"]), "hit" if hit else "miss", self.key,
                           cache_s)
