"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

FP8 (E4M3) weights and dynamic FP8 activations: the W8A8-FP8 checkpoints vLLM serves (llm-compressor's presets
FP8_DYNAMIC and FP8_BLOCK), data-free.

Weights: E4M3 with one fp32 scale per tensor, per output channel (row) or per ``block`` x ``block`` tile (edge tiles
smaller), ``scale = amax / 448``, fake-quantized once in ``compress``. Activations: a forward pre-hook on every
targeted Linear quantizes its input to E4M3 at run time with one scale per token (``acts: token``) or per group of
``block`` features of a token (``acts: group``, DeepSeek-V3 style). Grids: ``lcc.compressors.formats`` (equal to
compressed-tensors' on the same tensors). Level: the preset's name when the configuration is one
(``FP8_DYNAMIC`` = channel weights + token activations, ``FP8_BLOCK`` = 128x128 blocks + 128-groups), otherwise
``FP8-W<weights>-A<acts>`` (``A16``: activations untouched, ``W16``: weights untouched).
Not here: llm-compressor's ``FP8`` preset (static per-tensor activation scales calibrated on data).
"""
from __future__ import annotations

import torch

from lcc import ConfigError
from lcc.compressors import formats as F
from lcc.compressors.base import Compressor, Storage, choice, ints, param, target_linears


class FP8(Compressor):
    """FP8 E4M3 weights (per tensor / channel / block) and dynamic per-token (or per-token-group) FP8 activations."""

    name = "fp8"
    weights: str = param("channel", "weight scales: tensor | channel (one per output row) | block (block x block "
                                    "tiles) | none (weights untouched)",
                         choice("tensor", "channel", "block", "none"))
    acts: str = param("token", "dynamic activations at every targeted Linear input: token (one scale per token) | "
                               "group (per token, groups of `block` features) | none (W8A16)",
                      choice("token", "group", "none"))
    block: int = param(128, "side of a weight tile (weights=block) and activation group (acts=group)", ints(1, 1 << 16))

    def check(self) -> None:
        if self.weights == "none" and self.acts == "none":
            raise ConfigError("weights='none' with acts='none' is invalid (nothing is quantized); valid: weights in "
                              "[tensor, channel, block] or acts in [token, group] (compressor=none is the dense model)")

    def level(self) -> str:
        if (self.weights, self.acts, self.block) == ("channel", "token", 128):
            return "FP8_DYNAMIC"
        if (self.weights, self.acts, self.block) == ("block", "group", 128):
            return "FP8_BLOCK"
        w = "W16" if self.weights == "none" else f"W{self.weights}"
        a = "A16" if self.acts == "none" else f"A{self.acts}"
        uses_block = self.weights == "block" or self.acts == "group"
        return f"FP8-{w}-{a}" + (f"{self.block}" if uses_block and self.block != 128 else "")

    def acts_at_runtime(self) -> bool:
        return self.acts != "none"

    def storage(self) -> Storage:
        return Storage.NONE if self.acts_at_runtime() else Storage.WEIGHTS

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        if self.weights == "tensor":
            return F.fp8_tensor(w)
        if self.weights == "channel":
            return F.fp8_rows(w)
        return F.fp8_blocks(w, self.block)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return F.fp8_rows(x) if self.acts == "token" else F.fp8_groups(x, self.block)

    @torch.no_grad()
    def compress(self, model, calib=None):
        lins = target_linears(model, self.targets)
        bits, n = 0.0, 0
        for lin in lins.values():
            w = lin.weight.data
            if self.weights != "none":
                w.copy_(self.quantize_weight(w))
                rows, cols = w.shape
                per = {"tensor": w.numel(), "channel": cols,
                       "block": min(self.block, rows) * min(self.block, cols)}[self.weights]
                bits += (8 + 32 / per) * w.numel()  # an fp32 scale per tensor / row / tile
            else:
                bits += 16 * w.numel()
            n += w.numel()
        hooks = F.install_input_hooks(model, lins, self.quantize_input) if self.acts != "none" else 0
        return {"format": self.level(), "effective_bits": bits / max(n, 1), "n_linears": len(lins),
                "act_quant_hooks": hooks}
