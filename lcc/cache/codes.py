"""Fingerprinted: editing this file invalidates the cached compressed weights.

Quantized weights as integer codes: how the compressed-weights cache stores a Linear whose weights lie on the
:class:`~lcc.compressors.QuantGrid` its compressor recorded (docs/caching.md, "Storage").

A weight ``w`` on a grid is ``((code - zero) * scale).to(dtype)`` in fp32 for an integer ``code`` in
``0..2^bits - 1``: exactly the arithmetic of ``lcc.compressors.quantize.quantize_dequantize`` and of GPTQ's
column rule, so decoding gives the compressed tensor bit for bit. An entry stores, per coded Linear,

* ``<name>.weight.codes``: the codes packed at ``bits`` bits each (8 codes in ``bits`` bytes, the first code in
  the high bits; 2 codes a byte at 4 bits), row-major; with mixed precision 0 in the high-precision groups;
* ``<name>.weight.codes_high`` and ``<name>.weight.high`` (mixed precision only): the codes of the high-precision
  groups packed at ``high_bits``, and one bit per (row, group) saying which groups those are;
* ``<name>.weight.scale``: fp32 [rows, n_groups]; ``<name>.weight.zero``: the zero points, uint8 when they are
  all integers in 0..255 (RTN and GPTQ grids), else fp32;
* ``<name>.weight.g_idx``: int32 [cols], the group of every input column when it is not ``column // group``
  (GPTQ act-order with dynamic groups);

and the Linear's other parameters (bias) as they are. :func:`encode` recovers the codes from the compressed
weights and the grid and *verifies* them: the decoded weight must equal the compressed one bit for bit, else the
Linear is not coded (the caller stores a full copy). Bit masks (the mixed-precision groups here, a pruner's kept
weights in ``lcc.cache.compressed``) are packed 8 to a byte by :func:`pack_bits`.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from lcc.compressors.quantize import QuantGrid, group_index

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


#: codes of more bits are not packed (a grid of more bits is stored as a full copy)
MAX_BITS = 8


def packed_size(n: int, bits: int) -> int:
    """Bytes of ``n`` codes packed at ``bits`` bits."""
    return n if bits == 8 else -(-n // 8) * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in ``0..2^bits - 1`` (any shape, row-major) as a flat uint8 tensor of
    ``packed_size(numel, bits)`` bytes (on the codes' device)."""
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat
    if pad := (-flat.numel()) % 8:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, in uint8
        per = 8 // bits
        shifts = torch.arange(per - 1, -1, -1, device=flat.device, dtype=torch.uint8) * bits
        return (flat.view(-1, per) << shifts).sum(1, dtype=torch.uint8)
    # 3, 5, 6, 7 bits: 8 codes = one integer of 8*bits <= 56 bits = ``bits`` bytes
    it = torch.int32 if bits <= 3 else torch.int64  # 8 codes: 24 bits at 3 bits, up to 56 at 7
    shifts = torch.arange(7, -1, -1, device=flat.device, dtype=it) * bits
    v = (flat.view(-1, 8).to(it) << shifts).sum(1, dtype=it)
    byte_shifts = torch.arange(bits - 1, -1, -1, device=flat.device, dtype=it) * 8
    return ((v.unsqueeze(1) >> byte_shifts) & 255).to(torch.uint8).reshape(-1)


def unpack_codes(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """The inverse of :func:`pack_codes`: ``n`` codes as uint8 (on the packed tensor's device)."""
    if bits == 8:
        return packed[:n]
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per - 1, -1, -1, device=packed.device, dtype=torch.uint8) * bits
        return ((packed.unsqueeze(1) >> shifts) & (2 ** bits - 1)).reshape(-1)[:n]
    it = torch.int32 if bits <= 3 else torch.int64
    byte_shifts = torch.arange(bits - 1, -1, -1, device=packed.device, dtype=it) * 8
    v = (packed.view(-1, bits).to(it) << byte_shifts).sum(1, dtype=it)
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=it) * bits
    return ((v.unsqueeze(1) >> shifts) & (2 ** bits - 1)).to(torch.uint8).reshape(-1)[:n]


def _int_view(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: ``a`` and ``b`` have the same bits (unlike ==, -0.0 differs from 0.0 and NaN equals itself)."""
    return _int_view(a) == _int_view(b)


def _by_group(x: torch.Tensor, params: list[torch.Tensor], group_size: int, g_idx: torch.Tensor | None,
              fn: Callable[..., None]) -> None:
    """``fn(segment, *param_per_column)`` in place on ``x`` [rows, cols] for per-(row, group) ``params``
    [rows, n_groups]: by views over the contiguous groups (a head of whole groups, a shorter last group) as
    ``fake_quant`` walks them, or with the parameters gathered per column when ``g_idx`` orders the groups."""
    rows, cols = x.shape
    if g_idx is not None:
        fn(x, *(p[:, g_idx] for p in params))
        return
    g = cols if group_size <= 0 or group_size >= cols else group_size
    nf = cols // g
    if nf:
        fn(x[:, :nf * g].view(rows, nf, g), *(p[:, :nf].unsqueeze(-1) for p in params))
    if nf * g < cols:
        fn(x[:, nf * g:], *(p[:, nf:] for p in params))


def _dequantize_(x: torch.Tensor, zero: torch.Tensor, scale: torch.Tensor) -> None:
    x.sub_(zero).mul_(scale)  # (q - zero) * scale: the compressors' arithmetic, elementwise


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
               g_idx: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``((code - zero) * scale).to(dtype)`` in fp32 with each weight's (row, group) scale and zero: the
    compressors' own arithmetic (``(q - zero) * scale``), elementwise, so the result is bit for bit theirs."""
    x = codes.float()
    _by_group(x, [zero.float(), scale], group_size, g_idx, _dequantize_)
    return x.to(dtype)


def encode(w: torch.Tensor, grid: QuantGrid) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The codes of the weight ``w`` [rows, cols] on ``grid`` as entry tensors (names relative to
    ``<linear>.weight.``) and their description, or None when ``w`` does not lie on the grid bit for bit (then
    the caller keeps a full copy). Verified here: decoding the returned tensors gives ``w`` exactly."""
    rows, cols = w.shape
    bits_all = [grid.bits] + ([grid.high_bits] if grid.high is not None else [])
    scale, zero = grid.scale.to(w.device, torch.float32), grid.zero.to(w.device, torch.float32)
    ng = scale.shape[1] if scale.dim() == 2 else 0
    if max(bits_all) > MAX_BITS or scale.shape != (rows, ng) or zero.shape != (rows, ng):
        return None
    g_idx = grid.g_idx.to(w.device) if grid.g_idx is not None else None
    gi = grid.column_groups(cols).to(w.device)
    if gi.shape != (cols,) or (cols and (int(gi.min()) < 0 or int(gi.max()) >= ng)):
        return None
    high = grid.high.to(w.device).bool() if grid.high is not None else None
    maxq = torch.full((rows, ng), 2 ** grid.bits - 1, dtype=torch.float32, device=w.device)
    if high is not None:
        maxq[high] = 2 ** grid.high_bits - 1

    def quantize_(x, s, z, m):  # clamp(round(w / scale) + zero, 0, maxq), as the compressors
        x.div_(s).round_().add_(z).clamp_(min=0)
        torch.minimum(x, m, out=x)

    q = w.to(torch.float32, copy=True)
    _by_group(q, [scale, zero, maxq], grid.group_size, g_idx, quantize_)
    info: dict[str, Any] = {"bits": grid.bits, "group_size": grid.group_size, "n_groups": ng}
    exact_zero = bool((zero == zero.round()).all() and (zero >= 0).all() and (zero <= 255).all())

    def pack(q: torch.Tensor) -> dict[str, torch.Tensor]:
        codes = q.to(torch.uint8)
        out = {"scale": scale, "zero": zero.to(torch.uint8) if exact_zero else zero}
        if g_idx is not None:
            out["g_idx"] = gi.to(torch.int32)
        if high is not None:
            is_high = high[:, gi]
            out["codes"] = pack_codes(codes.masked_fill(is_high, 0), grid.bits)  # dense: a fast decode
            out["codes_high"] = pack_codes(codes[is_high], grid.high_bits)
            out["high"] = pack_bits(high)
            info.update(high_bits=grid.high_bits, n_high=int(is_high.sum()))
        else:
            out["codes"] = pack_codes(codes, grid.bits)
        return out

    out = pack(q)
    bad = ~same_bits(decode(out, info, w.shape, w.dtype, w.device), w)  # what will be stored, decoded
    if bad.any():  # low-precision weights (bf16 at 8 bits): the quotient may round to a neighbour code
        s, z, m = scale[:, gi][bad], zero[:, gi][bad], maxq[:, gi][bad]
        for step in (-1.0, 1.0):
            alt = torch.clamp(q[bad] + step, min=torch.zeros_like(m), max=m)
            ok = same_bits(((alt - z) * s).to(w.dtype), w[bad])
            q[bad] = torch.where(ok, alt, q[bad])
            s, z, m = s[~ok], z[~ok], m[~ok]
            bad[bad.clone()] = ~ok
            if not bad.any():
                break
        if bad.any():
            return None
        out = pack(q)
        if not same_bits(decode(out, info, w.shape, w.dtype, w.device), w).all():
            return None
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}, info


def expected(info: dict[str, Any], shape: tuple[int, int]) -> dict[str, tuple[torch.Size, torch.dtype | None]]:
    """Name (relative to ``<linear>.weight.``) -> (shape, dtype) of the tensors of a coded Linear (``zero``: uint8
    or float32, dtype None)."""
    rows, cols = shape
    ng = info["n_groups"]
    out: dict[str, tuple[torch.Size, torch.dtype | None]] = {
        "scale": (torch.Size([rows, ng]), torch.float32), "zero": (torch.Size([rows, ng]), None),
        "codes": (torch.Size([packed_size(rows * cols, info["bits"])]), torch.uint8)}
    n_high = info.get("n_high")
    if n_high is not None:
        out["codes_high"] = (torch.Size([packed_size(n_high, info["high_bits"])]), torch.uint8)
        out["high"] = (torch.Size([(rows * ng + 7) // 8]), torch.uint8)
    return out


def decode(t: dict[str, torch.Tensor], info: dict[str, Any], shape: tuple[int, int] | torch.Size,
           dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The weight [rows, cols] in ``dtype`` on ``device`` from the tensors ``encode`` returned."""
    rows, cols = shape
    ng = info["n_groups"]
    scale, zero = t["scale"].to(device), t["zero"].to(device)
    g_idx = t["g_idx"].to(device, torch.int64) if "g_idx" in t else None
    if "high" in t:
        gi = g_idx if g_idx is not None else group_index(cols, info["group_size"], device)
        is_high = unpack_bits(t["high"], (rows, ng), device)[:, gi]
        n_high = int(is_high.sum())
        if n_high != info["n_high"]:
            raise ValueError(f"high-precision mask has {n_high} weights, expected {info['n_high']}")
        codes = unpack_codes(t["codes"].to(device), rows * cols, info["bits"]).view(rows, cols).clone()
        codes[is_high] = unpack_codes(t["codes_high"].to(device), n_high, info["high_bits"])
    else:
        codes = unpack_codes(t["codes"].to(device), rows * cols, info["bits"]).view(rows, cols)
    return dequantize(codes, scale, zero, info["group_size"], g_idx, dtype)


def nbytes(t: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in t.values())


def bits_per_weight(t: dict[str, torch.Tensor], shape: tuple[int, int]) -> float:
    return 8 * nbytes(t) / max(math.prod(shape), 1)
