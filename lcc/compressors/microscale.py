"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Block-scaled 4- and 8-bit float formats: MXFP4, MXFP8 (OCP microscaling) and NVFP4, weight-only (W4A16, W8A16) or
with dynamic activations in the same format (W4A4, W8A8): llm-compressor's presets MXFP4A16 / MXFP4, MXFP8A16 /
MXFP8, NVFP4A16 / NVFP4, data-free.

* ``mxfp4``: E2M1 values, one E8M0 (power-of-two) scale per 32 consecutive input weights of a row.
* ``mxfp8``: E4M3 values, one E8M0 scale per 32.
* ``nvfp4``: E2M1 values, one E4M3 scale per 16, one fp32 global scale per tensor (shared by the Linears vLLM fuses,
  q/k/v and gate/up, as llm-compressor does: ``fuse_global``).

``acts: true`` adds a forward pre-hook on every targeted Linear that quantizes its input per token in the same
blocks (MX: E8M0 scale per 32 features; NVFP4: E4M3 scale per 16 features and, here, an fp32 global scale per
token). Deployed NVFP4 W4A4 uses a *static* activation global scale calibrated on data (llm-compressor's
``static_minmax`` observer); lcc's per-token global scale is data-free and causal (no token's grid depends on
another token, so the context length cannot change a token's grid), an optimistic bound on that calibration.
Grids: ``lcc.compressors.formats`` (equal to compressed-tensors' on the same tensors). Level: the preset's name.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from lcc.compressors import formats as F
from lcc.compressors.base import Compressor, Storage, param, target_linears


class _Microscale(Compressor):
    """A block-scaled float format (subclasses set the element format, the block and the preset name)."""

    element: ClassVar[str]
    block: ClassVar[int]
    preset: ClassVar[str]
    scale_bits: ClassVar[int]
    acts: bool = param(False, "false: weights only (A16); true: also dynamic per-token activations in the format")

    def level(self) -> str:
        return self.preset if self.acts else f"{self.preset}A16"

    def acts_at_runtime(self) -> bool:
        return self.acts

    def storage(self) -> Storage:
        return Storage.NONE if self.acts else Storage.WEIGHTS

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return F.mx(x, self.element, self.block)

    def quantize_weights(self, lins: dict) -> None:
        for lin in lins.values():
            lin.weight.data.copy_(F.mx(lin.weight.data, self.element, self.block))

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        self.quantize_weights(lins)
        n = sum(lin.weight.numel() for lin in lins.values())
        elem_bits = 4 if self.element == "e2m1" else 8
        hooks = F.install_input_hooks(model, lins, self.quantize_input) if self.acts else 0
        return {"format": self.level(), "effective_bits": elem_bits + self.scale_bits / self.block,
                "n_linears": len(lins), "n_weights": n, "act_quant_hooks": hooks}


class MXFP4(_Microscale):
    """MXFP4: E2M1 values with one E8M0 scale per 32 (W4A16; acts=true: W4A4)."""

    name = "mxfp4"
    element = "e2m1"
    block = F.MX_BLOCK
    preset = "MXFP4"
    scale_bits = 8


class MXFP8(_Microscale):
    """MXFP8: E4M3 values with one E8M0 scale per 32 (W8A16; acts=true: W8A8)."""

    name = "mxfp8"
    element = "e4m3"
    block = F.MX_BLOCK
    preset = "MXFP8"
    scale_bits = 8


class NVFP4(_Microscale):
    """NVFP4: E2M1 values, one E4M3 scale per 16, an fp32 global scale (W4A16; acts=true: W4A4)."""

    name = "nvfp4"
    element = "e2m1"
    block = F.NV_BLOCK
    preset = "NVFP4"
    scale_bits = 8
    fuse_global: bool = param(True, "one global scale for the Linears vLLM fuses (q/k/v, gate/up), as llm-compressor; "
                                    "false: one per Linear")

    def level(self) -> str:
        return super().level() + ("" if self.fuse_global else "-unfused")

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return F.nvfp4(x, per_row_global=True, block=self.block)

    def quantize_weights(self, lins: dict) -> None:
        groups = F.fused_groups(lins) if self.fuse_global else [[n] for n in lins]
        for names in groups:
            amax = torch.stack([lins[n].weight.detach().abs().amax() for n in names]).amax()
            for n in names:
                w = lins[n].weight.data
                w.copy_(F.nvfp4(w, global_amax=amax, block=self.block))
