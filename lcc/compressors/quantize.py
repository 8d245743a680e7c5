"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Group-wise min/max fake quantization (quantize then dequantize), shared by every quantizer.

Groups run along the last dimension (the input dimension of a Linear weight, the feature dimension
of an activation). When the width is not a multiple of ``group_size`` the last group is simply
shorter (SmolLM2's width 576 with groups of 128 gives four groups of 128 and one of 64): every
weight is still covered by exactly one (scale, zero) pair, and the effective bits per weight count
that extra group. ``group_size <= 0`` means one group per row.

Both grids are those of GPTQ's reference quantizer (IST-DASLab/gptq ``quant.py``, ``find_params`` and
``quantize``), with ``maxq = 2^bits - 1`` and ``q = clamp(round(x / scale) + zero, 0, maxq)``:

* asymmetric (default): ``xmin = min(x, 0)``, ``xmax = max(x, 0)`` of the group, ``scale = (xmax - xmin) / maxq``,
  integer ``zero = round(-xmin / scale)``;
* symmetric (``sym=True``): ``xmax = max(|xmin|, xmax)`` and, if the group has a negative value,
  ``xmin = -xmax``; ``scale = (xmax - xmin) / maxq`` (= 2·absmax / (2^bits - 1)) and ``zero = (maxq + 1) / 2``
  (the middle: 2^(bits-1)). Levels -2^(b-1)..2^(b-1)-1 in steps of ``scale``, so +absmax itself rounds to
  (2^(b-1) - 1)·scale. As in the reference, a group without negative values keeps ``xmin = 0``
  (scale = xmax / maxq, the same zero point): its largest values clip to (2^(b-1) - 1)·scale.

A group whose values are all zero gets the reference's range [-1, 1] (sym) or the smallest scale (asym); either
way its zeros stay exactly zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def qparams(x: torch.Tensor, bits: int, sym: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point along the last dim of ``x`` (kept as size 1). x is fp32."""
    qmax = 2 ** bits - 1
    if sym:  # GPTQ's reference grid (see the module docstring)
        lo = x.amin(-1, keepdim=True).clamp_max(0)
        hi = torch.maximum(lo.abs(), x.amax(-1, keepdim=True).clamp_min(0))
        lo = torch.where(lo < 0, -hi, lo)
        both_zero = (lo == 0) & (hi == 0)
        lo = torch.where(both_zero, torch.full_like(lo, -1.0), lo)
        hi = torch.where(both_zero, torch.ones_like(hi), hi)
        scale = (hi - lo) / qmax
        zero = torch.full_like(scale, (qmax + 1) / 2)
    else:
        lo = x.amin(-1, keepdim=True).clamp_max(0)
        hi = x.amax(-1, keepdim=True).clamp_min(0)
        scale = ((hi - lo) / qmax).clamp_min(1e-8)
        zero = torch.round(-lo / scale)
    return scale, zero


def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    q = torch.clamp(torch.round(x / scale) + zero, 0, 2 ** bits - 1)
    return (q - zero) * scale


def fake_quant(x: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False) -> torch.Tensor:
    """Fake-quantize ``x`` in groups of ``group_size`` along the last dim; same shape and dtype."""
    return fake_quant_grid(x, bits, group_size, sym)[0]


def fake_quant_grid(x: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fake_quant`` and its grid: (x fake-quantized, scale, zero), scale and zero fp32 [..., n_groups]."""
    width = x.shape[-1]
    g = width if group_size <= 0 or group_size >= width else group_size
    xf = x.float()
    n_full = (width // g) * g
    parts, scales, zeros = [], [], []
    if n_full:
        head = xf[..., :n_full].reshape(*x.shape[:-1], width // g, g)
        s, z = qparams(head, bits, sym)
        parts.append(quantize_dequantize(head, s, z, bits).reshape(*x.shape[:-1], n_full))
        scales.append(s.squeeze(-1))
        zeros.append(z.squeeze(-1))
    if n_full < width:
        tail = xf[..., n_full:]
        s, z = qparams(tail, bits, sym)
        parts.append(quantize_dequantize(tail, s, z, bits))
        scales.append(s)
        zeros.append(z)
    out = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
    cat = (lambda t: t[0]) if len(parts) == 1 else (lambda t: torch.cat(t, -1))
    return out.to(x.dtype), cat(scales), cat(zeros)


@torch.no_grad()
def fake_quant_linears(linears, bits: int, group_size: int, sym: bool = False,
                       record: Callable[[str, QuantGrid], None] | None = None) -> tuple[float, int]:
    """Fake-quantize the weights of every Linear (``{name: Linear}``, or an iterable of Linears) in place;
    ``record(name, grid)`` receives the grid of each. Returns (sum over weights of their effective bits,
    number of weights), so that callers can average over several sets."""
    eff, n = 0.0, 0
    items = linears.items() if isinstance(linears, dict) else enumerate(linears)
    for name, lin in items:
        w = lin.weight.data
        q, scale, zero = fake_quant_grid(w, bits, group_size, sym)
        w.copy_(q)
        if record is not None:
            record(name, QuantGrid(bits, group_size, scale, zero))
        eff += effective_bits(bits, w.shape[1], group_size) * w.numel()
        n += w.numel()
    return eff, n


def group_index(width: int, group_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Group of every input column (long [width]), following ``fake_quant``'s grouping."""
    g = width if group_size <= 0 or group_size >= width else group_size
    return torch.arange(width, device=device) // g


def n_groups(width: int, group_size: int) -> int:
    """Number of (scale, zero) groups per row for a row of ``width`` values."""
    if group_size <= 0 or group_size >= width:
        return 1
    return -(-width // group_size)


@dataclass
class QuantGrid:
    """The grid a quantizing compressor put one Linear's weight on: ``weight == ((code - zero) * scale)`` in fp32,
    cast to the weight's dtype, for integer codes in ``0..2^bits - 1`` (what the compressed-weights cache stores
    instead of the weights, docs/caching.md). Recorded with :meth:`Compressor.record_grid` when the weights are
    written, with the exact fp32 values the compressor used.

    ``scale``, ``zero``: fp32 [rows, n_groups], one pair per (row, group); ``group_size``: the input columns per
    group (-1: one group per row; the last group is shorter when the width is not a multiple); ``g_idx``: the
    group of every input column (long [cols]) when it is not ``column // group_size`` (GPTQ's act-order with
    dynamic groups); ``high`` (bool [rows, n_groups]) and ``high_bits``: groups whose codes have ``high_bits``
    bits instead of ``bits`` (mixed precision)."""

    bits: int
    group_size: int
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor | None = None
    high: torch.Tensor | None = None
    high_bits: int | None = None

    def column_groups(self, cols: int) -> torch.Tensor:
        """The group index of every input column (long [cols], on the grid's device)."""
        if self.g_idx is not None:
            return self.g_idx.to(self.scale.device)
        return group_index(cols, self.group_size, self.scale.device)


def effective_bits(bits: int, width: int, group_size: int, overhead_bits: int = 32) -> float:
    """Bits per weight including one fp16 scale and one fp16 zero point (``overhead_bits``) per group."""
    return bits + overhead_bits * n_groups(width, group_size) / width
