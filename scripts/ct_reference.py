"""compressed-tensors' own quantize functions for the formats of lcc.compressors.formats (the reference side of
scripts/compare_formats.py and tests/test_formats.py). Scales come from compressed-tensors' ``calculate_qparams`` /
``generate_gparam`` on the min/max that llm-compressor's memoryless min-max observer takes (its
``flatten_for_calibration`` + ``_get_min_max``, transcribed: llm-compressor itself does not install beside lcc);
values from ``fake_quantize`` (weights) and ``forward_quantize``'s dynamic path (activations)."""
from __future__ import annotations

import torch
from compressed_tensors.quantization import QuantizationArgs, preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from compressed_tensors.quantization.quant_args import QuantizationStrategy
from compressed_tensors.quantization.utils import (calculate_qparams, compute_dynamic_scales_and_zp,
                                                   generate_gparam, maybe_pad_tensor_for_block_quant)


def scheme(name: str):
    """(weight args, input-activation args or None) of an llm-compressor preset."""
    s = preset_name_to_scheme(name, ["Linear"])
    return s.weights, s.input_activations


def _weight_minmax(w: torch.Tensor, args: QuantizationArgs):
    """llm-compressor's observers/helpers.py _flatten_weight + min_max.py _get_min_max."""
    st = args.strategy
    if st == QuantizationStrategy.TENSOR:
        v = w.reshape(1, 1, -1)
    elif st == QuantizationStrategy.CHANNEL:
        v = w.unsqueeze(-2).unsqueeze(0)
    elif st in (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP):
        v = w.unflatten(-1, (-1, args.group_size)).unsqueeze(0)
    elif st == QuantizationStrategy.BLOCK:
        bh, bw = args.block_structure
        p = maybe_pad_tensor_for_block_quant(w, args.block_structure)
        v = p.reshape(p.shape[0] // bh, bh, p.shape[1] // bw, bw).transpose(1, 2).flatten(-2, -1).unsqueeze(0)
    else:
        raise ValueError(st)
    return torch.amin(v, dim=(0, -1)), torch.amax(v, dim=(0, -1))


def weight(w: torch.Tensor, args: QuantizationArgs, fused_absmax: torch.Tensor | None = None) -> torch.Tensor:
    """Fake-quantized weight. ``fused_absmax``: TENSOR_GROUP's global absmax over a fused group (q/k/v, gate/up),
    as llm-compressor's Observer.get_global_scale; default the weight's own."""
    lo, hi = _weight_minmax(w, args)
    g = None
    if args.strategy == QuantizationStrategy.TENSOR_GROUP:
        a = fused_absmax if fused_absmax is not None else torch.max(-lo.min(), hi.max())
        g = generate_gparam(-a.reshape(1), a.reshape(1))
    scale, zp = calculate_qparams(lo, hi, args, global_scale=g)
    return fake_quantize(w, scale, zp, args, global_scale=g)


def activation(x: torch.Tensor, args: QuantizationArgs, per_token_global: bool = True) -> torch.Tensor:
    """Dynamic fake quantization of an activation [tokens, features] (forward_quantize's dynamic branch). For
    TENSOR_GROUP (NVFP4), lcc's global scale is per token: one call per token with that token's global scale."""
    if args.strategy == QuantizationStrategy.TENSOR_GROUP:
        rows = []
        for t in x:
            a = t.abs().max()
            g = generate_gparam(-a.reshape(1), a.reshape(1))
            s, z = compute_dynamic_scales_and_zp(t[None], args, None, global_scale=g)
            rows.append(fake_quantize(t[None], s, z, args, global_scale=g))
        return torch.cat(rows)
    v = x[None]  # (batch, tokens, features): TOKEN reduces all but dims 0, 1
    s, z = compute_dynamic_scales_and_zp(v, args, None)
    return fake_quantize(v, s, z, args)[0]


def kv(x: torch.Tensor, per_head: bool) -> torch.Tensor:
    """FP8 E4M3 KV states [batch, heads, seq, head_dim] with a per-tensor or per-head scale, as llm-compressor's
    kv_cache_scheme (strategy tensor or attn_head; _flatten_attention + min/max of the states)."""
    args = QuantizationArgs(num_bits=8, type="float", symmetric=True,
                            strategy="attn_head" if per_head else "tensor")
    out = []
    for xb in x:  # one sequence at a time
        v = xb.unsqueeze(0).transpose(1, 2).flatten(0, 1)  # (seq, heads, d)
        if per_head:
            v = v.unsqueeze(-2).unsqueeze(-2)  # (seq, heads, 1, 1, d)
        else:
            v = v.flatten(-2, -1).unsqueeze(-2)  # (seq, 1, heads*d)
        lo, hi = torch.amin(v, dim=(0, -1)), torch.amax(v, dim=(0, -1))
        s, z = calculate_qparams(lo, hi, args)
        if per_head:  # (heads, 1, 1) against xb (heads, seq, d)
            out.append(fake_quantize(xb, s.reshape(-1, 1, 1), z.reshape(-1, 1, 1), args))
        else:
            out.append(fake_quantize(xb, s.reshape(()), z.reshape(()), args))
    return torch.stack(out)
