"""Compressed weights: what a compressor changed, stored once per (model, compressor config, calibration,
seed, dtype, device, versions, code) and applied to the freshly loaded dense weights on a hit.

One codec per storage kind a compressor declares (``Compressor.storage()``):

* ``Storage.MASK`` -> :class:`MaskCodec` (encoding ``keep_bits``): one bit per weight of the touched Linears,
  which weights were kept; a hit multiplies the dense weights by it (1/16 of the size of bf16 weights);
* ``Storage.WEIGHTS`` -> :class:`WeightsCodec` (encoding ``weights``): the parameters of the touched Linears.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from torch import nn

from lcc.cache.keys import device_id, library_versions, model_identity, source_fingerprint, tokens_sha256
from lcc.cache.store import FORMAT, TensorStore, key_of
from lcc.compressors import Compressor, Storage

log = logging.getLogger(__name__)

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as a flat uint8 CPU tensor, 8 entries a byte (first entry in the high bit, the last byte
    zero-padded): how the compressed-weights cache stores which weights a pruner kept (1/16 of bf16 weights)."""
    flat = mask.flatten().to(torch.uint8)
    if pad := (-flat.numel()) % 8:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    w = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * w).sum(dim=1, dtype=torch.uint8).cpu()


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple, device: torch.device | str = "cpu"
                ) -> torch.Tensor:
    """The inverse of ``pack_bits``: a bool tensor of ``shape`` on ``device``."""
    w = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=device)
    bits = packed.to(device).unsqueeze(1).bitwise_and(w).bool().flatten()
    return bits[:math.prod(shape)].view(shape)



class Codec:
    """How the touched Linears of a compressed model become tensors of an entry, and back."""

    encoding: str

    def expected(self, lins: dict[str, nn.Linear]) -> dict[str, tuple[torch.Size, torch.dtype]]:
        """Name -> (shape, dtype) of every tensor of a valid entry."""
        raise NotImplementedError

    def encode(self, lins: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(self, lins: dict[str, nn.Linear], tensors: dict[str, torch.Tensor]) -> None:
        """Turn the dense ``lins`` into the compressed ones (in place)."""
        raise NotImplementedError


class MaskCodec(Codec):
    """One bit per weight (kept or zeroed), applied to the freshly loaded dense weights on a hit."""

    encoding = "keep_bits"

    def expected(self, lins):
        return {f"{n}.weight.keep": (torch.Size([(lin.weight.numel() + 7) // 8]), torch.uint8)
                for n, lin in lins.items()}

    def encode(self, lins):
        return {f"{n}.weight.keep": pack_bits(lin.weight.detach() != 0) for n, lin in lins.items()}

    @torch.no_grad()
    def apply(self, lins, tensors):
        for n, lin in lins.items():
            w = lin.weight.data
            # w * True == w, w * False == ±0 (the sign of a zero changes no sum); 4x faster than masked_fill_
            w.mul_(unpack_bits(tensors[f"{n}.weight.keep"], w.shape, w.device))


class WeightsCodec(Codec):
    """The compressed parameters themselves."""

    encoding = "weights"

    @staticmethod
    def params(lins) -> dict[str, nn.Parameter]:
        return {f"{n}.{p}": param for n, lin in lins.items() for p, param in lin.named_parameters(recurse=False)}

    def expected(self, lins):
        return {k: (p.shape, p.dtype) for k, p in self.params(lins).items()}

    def encode(self, lins):
        return {k: p.detach() for k, p in self.params(lins).items()}

    @torch.no_grad()
    def apply(self, lins, tensors):
        ps = self.params(lins)
        for k, v in tensors.items():
            ps[k].data.copy_(v.to(ps[k].device))


CODECS: dict[Storage, Codec] = {Storage.MASK: MaskCodec(), Storage.WEIGHTS: WeightsCodec()}


@dataclass
class Compression:
    """The compress step's result."""

    info: dict[str, Any]  # the compressor's facts
    compress_s: float  # the compression's time (the original one on a cache hit)
    status: str = "off"  # off | uncacheable | recomputed | hit | miss
    key: str | None = None
    cache_s: float | None = None  # time spent in the cache (check, read or write), compression excluded
    weights: dict[str, int] | None = None  # targeted and changed Linears (set by lcc.job.compress_step)


class CompressedCache:
    """One entry of compressed weights of the Linears ``comp`` touches, in the codec of its storage kind."""

    def __init__(self, store: TensorStore, inputs: dict, comp: Compressor, model: nn.Module):
        self.codec = CODECS[comp.storage()]
        self.lins = comp.touched_linears(model)
        self.store, self.inputs = store, {**inputs, "encoding": self.codec.encoding}
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
        expected = self.codec.expected(self.lins)

        def miss():
            log.info("compressing with %s (cache miss, storing as %s)", self.label, self.key[:16])
            info, s = compute()
            info = json.loads(json.dumps(info, default=str))  # as a cache hit would return it
            return self.codec.encode(self.lins), {"compress_info": info, "compress_s": s}

        def check(tensors: dict, meta: dict) -> str | None:
            if set(tensors) != set(expected):
                return "stored tensor names differ from the compressor's target layers"
            bad = [k for k, v in tensors.items() if (v.shape, v.dtype) != expected[k]]
            return f"shape/dtype differ for {bad[:3]}" if bad else None

        t = time.perf_counter()
        tensors, meta, hit = self.store.get_or_create(self.key, self.inputs, miss, check)
        facts = meta["facts"]
        if hit:
            self.codec.apply(self.lins, tensors)
            log.info("compressed weights of %s from the cache (%s), compression skipped", self.label,
                     self.store.path(self.key))
        cache_s = time.perf_counter() - t - (0.0 if hit else facts["compress_s"])
        return Compression(facts["compress_info"], float(facts["compress_s"]), "hit" if hit else "miss", self.key,
                           cache_s)
