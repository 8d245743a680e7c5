"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Floating-point quantization formats: FP8 E4M3, FP4 E2M1, the MX (OCP microscaling) and NVFP4 block formats.

Fake quantization (quantize, then dequantize back into the tensor's dtype). The grids are those
of ``compressed-tensors`` (vLLM's quantization library, the one llm-compressor writes checkpoints with), function
by function: ``calculate_qparams`` (scales), ``generate_gparam`` (NVFP4's global scale), ``generate_mx_scales``
(E8M0 exponents) and ``fake_quantize`` (``x / scale``, clamp to the element range, round to the element format,
times ``scale``); ``scripts/compare_formats.py`` checks them on SmolLM2's weights and activations and
``tests/test_formats.py`` against the library itself, on random tensors with an LLM's outlier structure.
The arithmetic runs in the tensor's own dtype with torch's type promotion, as compressed-tensors' does (in bf16 the
FP8 scale ``amax / 448`` and ``x / scale`` are rounded to bf16, the checkpoints llm-compressor writes from bf16
weights; NVFP4's global and block scales are fp32), so the values equal the reference's in fp32 and in bf16.

Elements:

* **E4M3** (FP8, ``torch.float8_e4m3fn``): max 448, 3 mantissa bits, subnormals down to 2^-9; rounding is torch's
  cast (round to nearest even) after clamping to +-448 (saturation, never NaN).
* **E2M1** (FP4): the 15 values 0, +-0.5, +-1, +-1.5, +-2, +-3, +-4, +-6; round to nearest, ties to even (0.25 -> 0,
  0.75 -> 1, 1.25 -> 1, 2.5 -> 2, 5 -> 4), as compressed-tensors' ``cast_to_fp4``.

Scales (``amax`` = the largest |x| of the scale's block, with 0 always in range):

* **FP8** (per tensor, channel, 128x128 block, token or token group): ``scale = amax / 448``; a block of zeros gets
  the dtype's eps.
* **MX** (MXFP4, MXFP8; one E8M0 scale per 32 consecutive values): ``scale = 2^(e - offset)`` where ``2^e`` is
  ``amax`` rounded to a power of two (up when its mantissa is >= 1.75, as compressed-tensors' ``round_to_power_2``
  with E2M1's mantissa width; the OCP spec's ``floor(log2 amax)`` rounds down) and ``offset = floor(log2(element
  max))`` (2 for E2M1, 8 for E4M3); the biased exponent ``127 + e - offset`` is clamped to the E8M0 range 0..255.
* **NVFP4** (E2M1 elements; one E4M3 scale per 16 values; one fp32 global scale): ``g = 448 * 6 / amax_tensor``;
  block scale ``s = fp8(g * amax_block / 6)`` (0 -> 0.125, compressed-tensors' E4M3 eps); values are quantized with
  ``s / g``. llm-compressor shares one global scale between the Linears vLLM fuses (q/k/v, gate/up): callers pass
  their joint ``amax``.

Widths that are not a multiple of the block are padded with zeros (a shorter last block with its own scale, the
convention of ``lcc.compressors.quantize``); compressed-tensors requires divisible widths for groups and pads
128x128 blocks the same way.
"""
from __future__ import annotations

import torch

from lcc.compressors.quant_wa import HOOK_ATTR

E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
E2M1_MAX = 6.0
E4M3_EPS_SCALE = 0.125  # compressed-tensors' replacement for an NVFP4 block scale of 0 (_get_dtype_eps)
MX_BLOCK = 32
NV_BLOCK = 16

#: element formats: (largest value, E8M0 offset floor(log2(max)))
ELEMENTS = {"e4m3": (E4M3_MAX, 8), "e2m1": (E2M1_MAX, 2)}


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """``x`` (already within +-448) rounded to the nearest E4M3 value (ties to even)."""
    return x.to(torch.float8_e4m3fn).to(x.dtype)


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """``x`` (already within +-6) rounded to the nearest E2M1 value, ties to even: the step is 0.5 below 2,
    1 in [2, 4), 2 in [4, 6]."""
    a = x.abs()
    _, e = torch.frexp(a)  # a = m * 2^e, m in [0.5, 1): floor(log2 a) = e - 1
    step = torch.exp2((e - 2).clamp_min(-1).to(x.dtype))
    return torch.sign(x) * (torch.round(a / step) * step)


ROUND = {"e4m3": round_e4m3, "e2m1": round_e2m1}


def qdq(x: torch.Tensor, scale: torch.Tensor, element: str) -> torch.Tensor:
    """compressed-tensors' ``fake_quantize`` for a symmetric float format: round(clamp(x / scale)) * scale, in the
    promoted dtype of ``x`` and ``scale``."""
    top = ELEMENTS[element][0]
    return ROUND[element]((x / scale).clamp(-top, top)).to(scale.dtype) * scale


def absmax(x: torch.Tensor, dims) -> torch.Tensor:
    """max(|min(x, 0)|, max(x, 0)) over ``dims`` (kept): compressed-tensors' ``max_val_pos``."""
    lo = x.amin(dims, keepdim=True).clamp_max(0)
    hi = x.amax(dims, keepdim=True).clamp_min(0)
    return torch.maximum(lo.abs(), hi)


def fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    """FP8 scale for a block of absolute maximum ``amax``: amax / 448 (in amax's dtype), a zero block gets its eps."""
    s = amax / E4M3_MAX
    return torch.where(s == 0, torch.full_like(s, torch.finfo(s.dtype).eps), s)


def mx_scale(amax: torch.Tensor, element: str) -> torch.Tensor:
    """E8M0 scale 2^(e - offset) of an MX block (see the module docstring), in amax's dtype."""
    offset = ELEMENTS[element][1]
    m, e = torch.frexp(amax)
    e = e - 1 + (m >= 0.875).to(e.dtype)  # amax rounded to a power of two: up from a mantissa of 1.75
    biased = torch.where(amax > 0, 127 + e - offset, torch.zeros_like(e)).clamp(0, 255)
    return torch.exp2((biased - 127).to(torch.float32)).to(amax.dtype)


def nv_global_scale(amax_tensor: torch.Tensor) -> torch.Tensor:
    """NVFP4's global scale 448 * 6 / amax, computed in amax's dtype and returned as fp32 (compressed-tensors'
    ``generate_gparam``)."""
    a = amax_tensor.clamp_min(torch.finfo(amax_tensor.dtype).tiny)
    g = torch.nan_to_num((E4M3_MAX * E2M1_MAX) / a, nan=1.0, posinf=1.0, neginf=1.0).float()
    # at least 1-D, as the reference's [1]: a 0-dim fp32 tensor would not promote bf16 block scales to fp32
    return g.reshape(1) if g.ndim == 0 else g


def nv_block_scale(amax: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """The effective NVFP4 scale of a block (fp32), s / g with s = fp8(g * (amax / 6)) (0 -> 0.125); amax / 6 is
    computed in amax's dtype, the rest in fp32."""
    s = round_e4m3((global_scale * (amax / E2M1_MAX)).clamp(-E4M3_MAX, E4M3_MAX))
    s = torch.where(s == 0, torch.full_like(s, E4M3_EPS_SCALE), s)
    return s / global_scale


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """x [..., width] -> [..., n_blocks, block] zero-padded, and the width."""
    width = x.shape[-1]
    pad = (-width) % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.unflatten(-1, (-1, block)), width


def _unblocks(x: torch.Tensor, width: int) -> torch.Tensor:
    return x.flatten(-2)[..., :width]


# ---- FP8 ----------------------------------------------------------------------------------------
def fp8_tensor(x: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 with one scale for the whole tensor."""
    return qdq(x, fp8_scale(absmax(x, tuple(range(x.ndim)))), "e4m3").to(x.dtype)


def fp8_rows(x: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 with one scale per row (a weight's output channel; an activation's token)."""
    return qdq(x, fp8_scale(absmax(x, -1)), "e4m3").to(x.dtype)


def fp8_groups(x: torch.Tensor, group: int) -> torch.Tensor:
    """FP8 E4M3 with one scale per ``group`` consecutive values of the last dim (per-token groups of an activation)."""
    b, width = _blocks(x, group)
    return _unblocks(qdq(b, fp8_scale(absmax(b, -1)), "e4m3"), width).to(x.dtype)


def fp8_blocks(w: torch.Tensor, block: int) -> torch.Tensor:
    """FP8 E4M3 with one scale per ``block`` x ``block`` tile of a 2-D weight (DeepSeek-V3 style; edge tiles are
    smaller)."""
    rows, cols = w.shape
    pr, pc = (-rows) % block, (-cols) % block
    wf = torch.nn.functional.pad(w, (0, pc, 0, pr))
    t = wf.reshape(wf.shape[0] // block, block, wf.shape[1] // block, block)
    q = qdq(t, fp8_scale(absmax(t, (1, 3))), "e4m3")
    return q.reshape(wf.shape)[:rows, :cols].to(w.dtype)


# ---- microscaling -------------------------------------------------------------------------------
def mx(x: torch.Tensor, element: str, block: int = MX_BLOCK) -> torch.Tensor:
    """MX format (MXFP4: element e2m1, MXFP8: e4m3): one E8M0 scale per ``block`` values along the last dim."""
    b, width = _blocks(x, block)
    return _unblocks(qdq(b, mx_scale(absmax(b, -1), element), element), width).to(x.dtype)


def nvfp4(x: torch.Tensor, global_amax: torch.Tensor | None = None, per_row_global: bool = False,
          block: int = NV_BLOCK) -> torch.Tensor:
    """NVFP4: E2M1 values, one E4M3 scale per ``block`` values along the last dim, an fp32 global scale from
    ``global_amax`` (default: the tensor's own absmax; ``per_row_global``: one per row, as lcc's dynamic
    per-token activations)."""
    if per_row_global:
        amax = absmax(x, -1).unsqueeze(-1)  # [..., 1, 1] against blocks [..., n, block]
    elif global_amax is None:
        amax = absmax(x, tuple(range(x.ndim)))
    else:
        amax = global_amax
    g = nv_global_scale(amax)
    b, width = _blocks(x, block)
    return _unblocks(qdq(b, nv_block_scale(absmax(b, -1), g), "e2m1"), width).to(x.dtype)


def grid_values(element: str) -> torch.Tensor:
    """Every finite non-negative value of an element format (fp32, sorted): for tests and documentation."""
    if element == "e2m1":
        return torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    v = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    return torch.unique(v[torch.isfinite(v) & (v >= 0)])


# ---- shared by the format compressors -----------------------------------------------------------
def install_input_hooks(model, lins: dict, fn) -> int:
    """Fake-quantize the input of every Linear in ``lins`` with ``fn`` at run time (a forward pre-hook on each; the
    handles join ``quant_wa``'s, so ``QuantWA.remove(model)`` takes them off). Returns the number of hooks."""
    def hook(mod, args):
        return (fn(args[0]),) + tuple(args[1:])
    handles = getattr(model, HOOK_ATTR, [])
    for lin in lins.values():
        handles.append(lin.register_forward_pre_hook(hook))
    setattr(model, HOOK_ATTR, handles)
    return len(lins)


#: Linears that vLLM runs as one fused GEMM: llm-compressor gives them one NVFP4 global scale
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("w1", "w3"), ("q_a_proj", "kv_a_proj_with_mqa"))


def fused_groups(names) -> list[list[str]]:
    """The qualified Linear names grouped by fused set (same parent module, members of one ``FUSED`` tuple);
    every other Linear is a group of its own. Order follows ``names``."""
    groups: dict[tuple, list[str]] = {}
    for n in names:
        parent, _, leaf = n.rpartition(".")
        key = next(((parent, i) for i, s in enumerate(FUSED) if leaf in s), (n,))
        groups.setdefault(key, []).append(n)
    return list(groups.values())
