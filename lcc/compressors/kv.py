"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

KV-cache fake quantization that acts *inside* a single long forward.

Hugging Face's quantized caches leave the first prefill untouched, so a one-pass evaluation would
measure nothing. Here the keys and values are fake-quantized right before attention, in every targeted
attention module, whether or not a cache is used:

* an attention function ``lcc_kv_<base>`` is registered in transformers' ``AttentionInterface`` (and the
  matching mask function in ``AttentionMaskInterface``) and ``model.config._attn_implementation`` is set to
  it. It quantizes the key/value states of the modules that carry a ``_lcc_kv`` spec and delegates to the
  model's original implementation (``sdpa``, ``eager``, flash...). Modules without a spec pass through.
* keys reaching it are **post-RoPE**, shape [batch, kv_heads, seq, head_dim]. With ``pre_rope=true`` the
  keys are quantized instead on the ``k_proj`` output (before RoPE, as KVQuant) by a forward hook.

Grids (``lcc.compressors.quantize``, asymmetric min/max by default):

* keys ``key_mode=channel`` (KIVI): per channel, in groups of ``group_size`` consecutive tokens; the last
  group is shorter. ``key_mode=token``: per token, groups of ``group_size`` along head_dim.
* values: per token, groups of ``group_size`` along head_dim.
* ``format=fp8``: keys and values in FP8 E4M3 (vLLM's ``kv_cache_dtype=fp8``) with one scale per sequence and
  layer (``fp8_scale=tensor``) or per kv head (``head``), ``amax / 448`` over the positions attended (the scale a
  calibration on this text would give; llm-compressor's kv_cache_scheme strategies tensor / attn_head), or the
  unit scale (``unit``: vLLM's default without calibrated scales). ``lcc.compressors.formats``; compared with
  compressed-tensors in ``scripts/compare_formats.py``.

Full-precision tokens:

* ``sink``: the first ``sink`` positions are never quantized (attention sinks), for every query.
* ``window``: exact per-query semantics -- query i sees keys/values i-window+1..i in full precision and all
  older ones quantized, as a cache that keeps its most recent ``window`` tokens unquantized would during
  generation. Implemented by attending, per block of queries, over the quantized keys outside the window
  plus the full-precision keys inside it (one softmax over the union, disjoint masks), so the cost is one
  attention pass plus a window. Needs post-RoPE keys (``pre_rope=false``).

Simplification: in one prefill, channel-wise key groups take their min/max over all tokens of the group,
including tokens later than the query (what a cache holds after the prefill, not during it).

Generation with a KV cache: the cache holds full-precision keys/values; every call (a one-token decoding step
too) quantizes all the keys/values it attends to. ``pre_rope`` keys are quantized on the k_proj output, which
holds only the new positions: the hook keeps the full-precision pre-RoPE keys of the cached positions, so a new
key is quantized with the statistics of its whole channel group so far.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lcc import ConfigError
from lcc.compressors import formats
from lcc.compressors.attention_fns import base_function, cache_of, register_attention
from lcc.compressors.base import Compressor, choice, decoder_layers, groups, ints, param
from lcc.compressors.quantize import fake_quant

PREFIX = "lcc_kv_"
QUERY_CHUNK = 1024  # queries per block in the windowed attention


@dataclass
class KVSpec:
    bits: int
    group_size: int
    key_mode: str
    sym: bool
    pre_rope: bool
    sink: int
    window: int
    fmt: str = "int"
    fp8_scale: str = "tensor"

    @property
    def per_token_keys(self) -> bool:
        """Each key's grid depends on that position alone (no statistics over other positions)."""
        return self.key_mode != "channel" if self.fmt == "int" else self.fp8_scale == "unit"

    def _fp8(self, x: torch.Tensor) -> torch.Tensor:
        """FP8 E4M3 of states [batch, heads, seq, head_dim], one scale per sequence, per head, or 1."""
        if self.fp8_scale == "unit":
            scale = torch.ones((), dtype=x.dtype, device=x.device)
        else:
            scale = formats.fp8_scale(formats.absmax(x, (1, 2, 3) if self.fp8_scale == "tensor" else (2, 3)))
        return formats.qdq(x, scale, "e4m3").to(x.dtype)

    def _rest(self, x: torch.Tensor, fn) -> torch.Tensor:
        """Apply ``fn`` to the positions after the sink tokens (dim -2 is the sequence)."""
        s = min(self.sink, x.shape[-2])
        if s == 0:
            return fn(x)
        if s == x.shape[-2]:
            return x
        return torch.cat([x[..., :s, :], fn(x[..., s:, :])], dim=-2)

    def quant_keys(self, k: torch.Tensor) -> torch.Tensor:
        if self.fmt == "fp8":
            return self._rest(k, self._fp8)
        if self.key_mode == "channel":
            return self._rest(k, lambda x: fake_quant(x.transpose(-1, -2), self.bits, self.group_size,
                                                      self.sym).transpose(-1, -2))
        return self._rest(k, lambda x: fake_quant(x, self.bits, self.group_size, self.sym))

    def quant_values(self, v: torch.Tensor) -> torch.Tensor:
        if self.fmt == "fp8":
            return self._rest(v, self._fp8)
        return self._rest(v, lambda x: fake_quant(x, self.bits, self.group_size, self.sym))


def _allowed(attention_mask, a, e, hi, qpos, kpos, dtype):
    """Boolean [b|1, 1|h, e-a, hi] of allowed (query, key) pairs for queries a..e-1 and keys 0..hi-1."""
    if attention_mask is None:
        return (kpos.unsqueeze(0) <= qpos.unsqueeze(1)).view(1, 1, e - a, hi)
    m = attention_mask[..., a:e, :hi]
    if m.dtype == torch.bool:
        return m
    return m > torch.finfo(m.dtype).min / 2


def windowed_attention(module, query, k_q, k_fp, v_q, v_fp, attention_mask, window: int,
                       scaling: float | None = None, **_):
    """Attention where, for query i, keys within the last ``window`` positions use (k_fp, v_fp) and all
    older keys (k_q, v_q). Returns (attn_output [b, q, heads, d], None) like HF attention functions."""
    b, hq, tq, _ = query.shape
    tk = k_q.shape[2]
    enable_gqa = hq != k_q.shape[1]
    offset = tk - tq
    dev = query.device
    out = torch.empty(b, hq, tq, v_q.shape[-1], dtype=query.dtype, device=dev)
    for a in range(0, tq, QUERY_CHUNK):
        e = min(a + QUERY_CHUNK, tq)
        hi = offset + e
        lo = max(0, offset + a - window + 1)
        qpos = offset + torch.arange(a, e, device=dev)
        kpos = torch.arange(0, hi, device=dev)
        base = _allowed(attention_mask, a, e, hi, qpos, kpos, query.dtype)
        in_win = kpos.unsqueeze(0) > (qpos.unsqueeze(1) - window)  # [q, hi]
        allow_q = base & ~in_win
        allow_fp = base[..., lo:hi] & in_win[:, lo:hi]
        bq = max(allow_q.shape[0], allow_fp.shape[0])
        mask = torch.cat([allow_q.expand(bq, *allow_q.shape[1:]), allow_fp.expand(bq, *allow_fp.shape[1:])], -1)
        keys = torch.cat([k_q[:, :, :hi], k_fp[:, :, lo:hi]], dim=2)
        vals = torch.cat([v_q[:, :, :hi], v_fp[:, :, lo:hi]], dim=2)
        kw = {"enable_gqa": True} if enable_gqa else {}
        out[:, :, a:e] = F.scaled_dot_product_attention(query[:, :, a:e], keys, vals, attn_mask=mask,
                                                        scale=scaling, **kw)
    return out.transpose(1, 2).contiguous(), None


def make_attention(base: str):
    def lcc_kv_attention(module, query, key, value, attention_mask, *args, **kwargs):
        spec: KVSpec | None = getattr(module, "_lcc_kv", None)
        fn = base_function(base, module)
        if spec is None:
            return fn(module, query, key, value, attention_mask, *args, **kwargs)
        rot = getattr(module, "_lcc_qk_rotation", None)  # rotate's online Hadamard: q·kᵀ unchanged, keys rotated
        if rot is not None:
            query, key = rot(query), rot(key)
        k_fp, v_fp = key, value
        if not spec.pre_rope:
            key = spec.quant_keys(key)
        value = spec.quant_values(value)
        if spec.window > 0:
            return windowed_attention(module, query, key, k_fp, value, v_fp, attention_mask, spec.window,
                                      scaling=kwargs.get("scaling"))
        return fn(module, query, key, value, attention_mask, *args, **kwargs)
    lcc_kv_attention.__name__ = f"{PREFIX}{base}"
    return lcc_kv_attention


def block_attention(block) -> dict[str, torch.nn.Module]:
    """The attention modules of a decoder block: modules with k_proj and v_proj, or (fused projections: phi3
    ``qkv_proj``, gpt_neox/falcon ``query_key_value``, gpt2 ``c_attn``, MLA) an ``...Attention`` module with a
    ``config``, which hands its key/value states to transformers' attention interface; the outermost ones."""
    out: dict[str, torch.nn.Module] = {}
    for n, m in block.named_modules():
        if any(n.startswith(p + ".") for p in out):
            continue
        if (hasattr(m, "k_proj") and hasattr(m, "v_proj")) or (
                "Attention" in type(m).__name__ and getattr(m, "config", None) is not None):
            out[n] = m
    return out


def attention_modules(model, targets) -> dict[str, torch.nn.Module]:
    """``{layers.i.<name>: attention module}`` of the targeted blocks (:func:`block_attention`)."""
    layers = decoder_layers(model)
    out = {}
    for i in targets.layer_range(len(layers)):
        for n, m in block_attention(layers[i]).items():
            if any(fnmatch.fnmatch(n, p) for p in targets.patterns):
                out[f"layers.{i}.{n}"] = m
    return out


def _cache_start(module, kwargs) -> int:
    """How many positions of this attention layer the KV cache passed to this call already holds (0: none)."""
    cache = cache_of(kwargs)
    if cache is None:
        return 0
    try:
        return int(cache.get_seq_length(getattr(module, "layer_idx", 0) or 0))
    except (TypeError, AttributeError):
        return int(cache.get_seq_length())


def _k_proj_hook(attn):
    """Pre-RoPE key quantization on the k_proj output. Without a cache (or at a cache's first prefill) the
    call's keys are all the keys. With a KV cache, a later call holds only the new positions: their
    channel-wise groups also contain earlier positions, so the hook keeps the full-precision pre-RoPE keys it
    has seen (cropped to the cache's length, so a cache cropped back stays consistent) and quantizes the new
    keys with the statistics of their whole group so far. Keys already in the cache keep their values."""
    def hook(mod, args, out):
        spec = getattr(attn, "_lcc_kv", None)
        if spec is None:
            return out
        d = getattr(attn, "head_dim", None) or out.shape[-1] // attn.config.num_key_value_heads
        b, t, _ = out.shape
        k = out.view(b, t, -1, d).transpose(1, 2)
        start = getattr(attn, "_lcc_kv_start", 0)
        if spec.per_token_keys:  # per-token groups (or a unit fp8 scale): no other position is involved
            return spec.quant_keys(k).transpose(1, 2).reshape(b, t, -1)
        prev = getattr(attn, "_lcc_kv_seen", None)
        if start > 0 and prev is not None and prev.shape[-2] >= start and prev.shape[:2] == k.shape[:2]:
            full = torch.cat([prev[..., :start, :], k], dim=-2)
        else:
            full = k  # no cache, or a cache this hook has not seen from its start: the call's keys alone
        attn._lcc_kv_seen = full if getattr(attn, "_lcc_kv_use_cache", False) else None  # for the next call
        q = spec.quant_keys(full)[..., -t:, :]
        return q.transpose(1, 2).reshape(b, t, -1)
    return hook


def _attn_cache_flag_hook(module, args, kwargs):
    """Record whether this call writes a KV cache (then the pre-RoPE keys are kept for the next call)."""
    module._lcc_kv_start = _cache_start(module, kwargs)
    module._lcc_kv_use_cache = cache_of(kwargs) is not None


class KVQuant(Compressor):
    """Fake-quantized keys and values inside every attention of the targeted blocks (targets.layers select the
    blocks; targets.modules match attention modules)."""

    name = "kv"
    bits: int = param(4, "bits of keys and values", ints(2, 8))
    group_size: int = param(128, "channel keys: tokens per group; token keys and values: head_dim entries per "
                                 "group; -1 = one group", groups(whole="one group", hi=1 << 24))
    key_mode: str = param("channel", "channel (per channel, groups along tokens, KIVI) | token (per token)",
                          choice("channel", "token"))
    sym: bool = param(False, "symmetric absmax grid instead of asymmetric min/max")
    pre_rope: bool = param(False, "false: quantize post-RoPE keys in the attention function; true: the k_proj "
                                  "output (before RoPE)")
    sink: int = param(0, "the first `sink` positions stay full precision (attention sinks)", ints(0, 1 << 24))
    window: int = param(0, "each query sees its last `window` keys/values in full precision (exact per query; "
                           "post-RoPE only)", ints(0, 1 << 24))
    format: str = param("int", "int: the integer grid above; fp8: FP8 E4M3 keys and values (bits, group_size, "
                               "key_mode, sym do not apply)", choice("int", "fp8"))
    fp8_scale: str = param("tensor", "format=fp8: one scale per sequence and layer (tensor), per kv head (head), or "
                                     "1 (unit, vLLM without calibrated scales)", choice("tensor", "head", "unit"))

    def acts_at_runtime(self) -> bool:
        return True  # an attention function (and k_proj hooks with pre_rope)

    def touched_linears(self, model):
        return {}  # it changes no weight (its targets select attention modules; coverage counts none)

    @staticmethod
    def target_candidates(block):
        """``targets.modules`` selects attention modules (:func:`block_attention`)."""
        return block_attention(block)

    def check_targets(self, model) -> None:
        super().check_targets(model)
        if self.pre_rope:
            fused = sorted({type(m).__name__ for m in attention_modules(model, self.targets).values()
                            if not hasattr(m, "k_proj")})
            if fused:
                raise ConfigError(f"compressor.pre_rope=true needs a separate k_proj, but {type(model).__name__} "
                                  f"projects keys in a fused layer ({', '.join(fused)}); valid: pre_rope=false "
                                  f"(post-RoPE keys, in the attention function)")

    def check(self):
        if self.format == "fp8":
            for f in ("bits", "group_size", "key_mode", "sym"):
                default = type(self).__dataclass_fields__[f].default
                if getattr(self, f) != default:
                    raise ConfigError(f"{f}={getattr(self, f)!r} does not apply to format='fp8' (E4M3 keys and "
                                      f"values); valid: leave {f} at {default!r}, or format='int'")
        elif self.fp8_scale != "tensor":
            raise ConfigError(f"fp8_scale={self.fp8_scale!r} applies to format='fp8' only; valid: format='fp8', or "
                              f"leave fp8_scale at 'tensor'")
        if self.pre_rope and self.window > 0:
            raise ConfigError(f"window={self.window!r} with pre_rope=true is not supported (the full-precision "
                              f"window needs post-RoPE keys); valid: window=0 or pre_rope=false")

    def level(self) -> str:
        if self.format == "fp8":
            s = "kv-fp8" + ("" if self.fp8_scale == "tensor" else f"-{self.fp8_scale}")
        else:
            s = f"kv{self.bits}" + ("k-tok" if self.key_mode == "token" else "")
            s += ("" if self.group_size == 128 else f"g{self.group_size}") + ("sym" if self.sym else "")
        s += "-prerope" if self.pre_rope else ""
        s += f"-sink{self.sink}" if self.sink else ""
        s += f"-win{self.window}" if self.window else ""
        return s

    def compress(self, model, calib=None):
        mods = attention_modules(model, self.targets)
        if not mods:
            raise ConfigError(f"kv: targets {self.targets.patterns} / layers {self.targets.layers} select no "
                              f"attention module (modules with k_proj and v_proj, or ...Attention modules)")
        cfg = model.config
        base = getattr(cfg, "_attn_implementation", None) or "eager"
        if base.startswith(PREFIX):
            base = base[len(PREFIX):]
        name = register_attention(PREFIX, base, make_attention, 'kv')
        cfg._attn_implementation = name
        spec = KVSpec(int(self.bits), int(self.group_size), self.key_mode, bool(self.sym), bool(self.pre_rope),
                      int(self.sink), int(self.window), self.format, self.fp8_scale)
        hooks = 0
        for attn in mods.values():
            attn._lcc_kv = spec
            if getattr(attn, "config", cfg) is not cfg:
                attn.config._attn_implementation = name
            if spec.pre_rope and not getattr(attn, "_lcc_kv_hooked", False):
                attn.register_forward_pre_hook(_attn_cache_flag_hook, with_kwargs=True)
                attn.k_proj.register_forward_hook(_k_proj_hook(attn))
                attn._lcc_kv_hooked = True
                hooks += 1
        return {"attn_implementation": name, "n_attention": len(mods), "k_proj_hooks": hooks}

    @staticmethod
    def remove(model) -> None:
        """Turn KV quantization off (the registered function then passes through)."""
        for m in model.modules():
            if hasattr(m, "_lcc_kv"):
                m._lcc_kv = None
