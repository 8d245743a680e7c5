"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

AWQ (Lin et al. 2024, mit-han-lab/llm-awq): activation-aware weight quantization, W4A16.

On lcc's sequential engine, block by block, as the reference ``run_awq`` (``awq/quantize/pre_quant.py``,
``auto_scale.py``, ``auto_clip.py``, ``quantizer.py``):

1. the inputs of every targeted Linear of the block over all calibration tokens (``InputStats``; q/k/v and
   gate/up share one input, found by the engine);
2. **scale search** for each group (the reference's Llama branch): ``input_layernorm`` -> q/k/v inspected through
   the attention, ``v_proj`` -> ``o_proj`` (only when both have the same shape, i.e. no GQA, as the reference),
   ``post_attention_layernorm`` -> gate/up inspected through the MLP, ``up_proj`` -> ``down_proj``. With
   ``x̄_j`` the mean |x_j| over all tokens, for ``ratio = k / n_grid``, k = 0..n_grid-1:
   ``s = clamp(x̄^ratio, 1e-4)``, ``s /= sqrt(max s · min s)``, each Linear's weight becomes ``Q(W·s)/s``, and the
   loss is the mean squared difference of the inspected module's output from the original; the best ``s`` of
   each group wins. All searches of a block run on the block's original weights;
3. the scales are applied (the previous op divided by s: a norm's weight, or a Linear's output rows; the group's
   input columns multiplied by s) and the recorded inputs divided by s;
4. **clipping search** for every targeted Linear except q/k (the reference skips them: the q·k product makes the
   error hard to measure): per output row and group, the clipping range ``max|w| · (1 - i/n_grid)`` for
   i = 0..max_shrink·n_grid-1 that minimises the mean squared error of the group's partial products over 512
   tokens sampled at a stride (``n_tokens // 512``); the weights are clamped to it;
5. every targeted Linear is quantized on AWQ's grid: asymmetric min/max per group *without* forcing 0 into the
   range (``scale = (max - min).clamp(1e-5) / (2^b - 1)``, ``zero = clamp(-round(min / scale), 0, 2^b - 1)``),
   in the weights' dtype (the reference's ``pseudo_quantize_tensor``).

The next block's inputs: the reference (llm-awq ``run_awq`` and AutoAWQ alike) computes each block's output
before scaling and quantizing it, so every block is calibrated on the *dense* model's activations: lcc's
``propagate: false``, the default here. ``propagate: true`` calibrates each block on the outputs of the
already-quantized blocks before it (GPTQ's way).

Differences from the reference, none of which changes a number where the reference runs: a width that is not a
multiple of ``group_size`` gets a shorter last group (the reference asserts divisibility; SmolLM2's 576 with
128); fewer than 512 calibration tokens use stride 1 (the reference's stride would be 0); the search's module
outputs are computed in chunks of ``CHUNK_TOKENS`` tokens with the squared error summed in fp32 (one chunk, the
reference's computation, up to that size); the clipping search's partial products are one batched matrix
product per group instead of the reference's broadcast product and sum (same sums in another order, ~30x faster on
a CPU core; ``LCC_AWQ_EXACT_CLIP=1`` uses the reference's; on the tiny model both give the same clips). AWQ folds 1/s into the norms, outside the Linears, so it is not cached
(``Storage.NONE``). ``awq_scales`` / ``awq_clips`` keep the searched values on the instance for comparisons.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from lcc import ConfigError
from lcc.compressors.base import Storage, decoder_layers, fraction, groups, ints, param, target_linears
from lcc.compressors.engine import Calibrated, Stats, run_sequential
from lcc.compressors.quantize import effective_bits
from lcc.compressors.structure import check_llama_like, norm_groups, submodule

#: the search runs a module over at most this many calibration tokens at once (the loss is summed over chunks)
CHUNK_TOKENS = 1 << 16
#: output rows per clipping-search batch (rows are independent: memory only)
CLIP_ROWS = 64
#: Linears whose clipping the reference skips (substrings of the block-relative name)
NO_CLIP = ("q_", "k_", "query", "key", "Wqkv")


class InputStats(Stats):
    """The inputs themselves, [n_samples, seqlen, in_features] per group leader (AWQ searches on them)."""

    def __init__(self):
        self.x: dict[str, list[torch.Tensor]] = {}

    def add_batch(self, name, inp):
        self.x.setdefault(name, []).append(inp.detach())

    def pop(self, name):
        parts = self.x.pop(name)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)


def _spans(width: int, group_size: int) -> list[tuple[int, int, int]]:
    """(start, stop, group width) of the column ranges with equal groups: the full groups, then the shorter last."""
    g = width if group_size <= 0 or group_size >= width else group_size
    full = (width // g) * g
    return [(0, full, g)] + ([(full, width, width - full)] if full < width else [])


def awq_qdq(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """AWQ's ``pseudo_quantize_tensor(w, n_bit=bits, zero_point=True, q_group_size=group_size)`` along the last
    dim, in w's dtype; a last group shorter than ``group_size`` is its own group."""
    max_int = 2 ** bits - 1
    out = torch.empty_like(w)
    for a, b, g in _spans(w.shape[-1], group_size):
        x = w[..., a:b].reshape(-1, g)
        max_val = x.amax(dim=1, keepdim=True)
        min_val = x.amin(dim=1, keepdim=True)
        scales = (max_val - min_val).clamp(min=1e-5) / max_int
        zeros = (-torch.round(min_val / scales)).clamp_(0, max_int)
        q = (torch.clamp(torch.round(x / scales) + zeros, 0, max_int) - zeros) * scales
        out[..., a:b] = q.reshape(*w.shape[:-1], b - a)
    return out


def _run(mod: nn.Module, x: torch.Tensor, kw: dict) -> torch.Tensor:
    out = mod(hidden_states=x, **kw) if kw else mod(x)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def _outputs(mod: nn.Module, x: torch.Tensor, kw: dict) -> list[torch.Tensor]:
    step = max(1, CHUNK_TOKENS // max(x.shape[1], 1))
    return [_run(mod, x[s:s + step], kw) for s in range(0, x.shape[0], step)]


@torch.no_grad()
def search_scale(fcs: list[nn.Linear], x: torch.Tensor, inspect: nn.Module, kw: dict, bits: int,
                 group_size: int, n_grid: int) -> tuple[torch.Tensor, float, float]:
    """The reference's ``_search_module_scale``: (best scales, best ratio, best loss); weights restored."""
    org = _outputs(inspect, x, kw)
    x_max = x.abs().view(-1, x.shape[-1]).mean(0)
    best_error, best_ratio, best_scales = float("inf"), -1.0, None
    saved = [fc.weight.data.clone() for fc in fcs]
    step = max(1, CHUNK_TOKENS // max(x.shape[1], 1))
    history = []
    for r in range(n_grid):
        ratio = r * 1 / n_grid
        scales = x_max.pow(ratio).clamp(min=1e-4).view(-1)
        scales = scales / (scales.max() * scales.min()).sqrt()
        for fc in fcs:
            fc.weight.mul_(scales.view(1, -1).to(fc.weight.device))
            fc.weight.data = awq_qdq(fc.weight.data, bits, group_size) / (scales.view(1, -1))
        if len(org) == 1:
            loss = (org[0] - _run(inspect, x, kw)).float().pow(2).mean().item()
        else:
            sq = sum(float((o - _run(inspect, x[i * step:(i + 1) * step], kw)).float().pow(2).sum())
                     for i, o in enumerate(org))
            loss = sq / sum(o.numel() for o in org)
        history.append(loss)
        if loss < best_error:
            best_error, best_ratio, best_scales = loss, ratio, scales
        for fc, w in zip(fcs, saved):
            fc.weight.data = w.clone()
    if best_scales is None:
        raise RuntimeError(f"awq: no finite loss in the scale search (losses {history})")
    return best_scales.view(-1).detach(), best_ratio, best_error


def _partial(feat: torch.Tensor, w: torch.Tensor, exact: bool) -> torch.Tensor:
    """Per-group partial products [rows, tokens, n_groups] of feat [1, tokens, n_groups, g] and w [rows, 1,
    n_groups, g]: the reference's ``(feat * w).sum(-1)`` (``exact``), or the same sums as one batched matrix
    product per group (other summation order; ~10x faster on a CPU, where the broadcast product dominates)."""
    if exact:
        return (feat * w).sum(dim=-1)
    return torch.einsum("tjk,rjk->rtj", feat[0], w[:, 0])


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int, n_grid: int = 20,
                max_shrink: float = 0.5, n_sample_token: int = 512, exact: bool | None = None) -> list[torch.Tensor]:
    """The reference's ``auto_clip_layer``: the best max |w| per (row, group), one tensor [rows, n_groups, 1] per
    span of equal groups (see ``_spans``). ``exact`` (default: ``LCC_AWQ_EXACT_CLIP=1``, else False): the
    reference's elementwise product and sum instead of a batched matrix product."""
    if exact is None:
        exact = os.environ.get("LCC_AWQ_EXACT_CLIP", "0") == "1"
    x = x.reshape(-1, x.shape[-1])
    x = x[0::max(1, x.shape[0] // n_sample_token)]
    out = []
    for a, b, g in _spans(w.shape[1], group_size):
        feat = x[:, a:b].reshape(1, x.shape[0], -1, g)
        wg = w[:, a:b].reshape(w.shape[0], 1, -1, g)
        best_all = []
        for r0 in range(0, wg.shape[0], CLIP_ROWS):
            ww = wg[r0:r0 + CLIP_ROWS]
            org_max_val = ww.abs().amax(dim=-1, keepdim=True)
            best_max_val = org_max_val.clone()
            min_errs = torch.ones_like(org_max_val) * 1e9
            org_out = _partial(feat, ww, exact)
            for i_s in range(int(max_shrink * n_grid)):
                max_val = org_max_val * (1 - i_s / n_grid)
                cur_w = torch.clamp(ww, -max_val, max_val)
                q_w = awq_qdq(cur_w, bits, g)
                cur_out = _partial(feat, q_w, exact)
                err = (cur_out - org_out).pow(2).mean(dim=1).view(min_errs.shape)
                better = err < min_errs
                min_errs[better] = err[better]
                best_max_val[better] = max_val[better]
            best_all.append(best_max_val)
        out.append(torch.cat(best_all, 0).squeeze(1))
    return out


def apply_clip_(w: torch.Tensor, max_vals: list[torch.Tensor], group_size: int) -> None:
    for (a, b, g), mv in zip(_spans(w.shape[1], group_size), max_vals):
        mv = mv.to(w.device, w.dtype)
        part = w[:, a:b].reshape(*mv.shape[:2], -1)
        w[:, a:b] = torch.clamp(part, -mv, mv).reshape(w.shape[0], b - a)


class AWQ(Calibrated):
    """AWQ weight-only quantization: activation-aware per-channel scales (grid search) and clipping (search),
    then min/max group quantization."""

    name = "awq"
    stats = InputStats
    bits: int = param(4, "bits per weight", ints(2, 8))
    group_size: int = param(128, "input weights per (scale, zero) group; -1 = one group per row; the last "
                                 "group is shorter if needed", groups())
    n_grid: int = param(20, "scale search: ratios k/n_grid, k = 0..n_grid-1 (the authors' 20); clipping: shrink "
                            "steps of 1/n_grid", ints(1, 1000))
    max_shrink: float = param(0.5, "clipping search: shrink max|w| by up to this fraction", fraction())
    clip: bool = param(True, "run the clipping search (false: scales only)")
    propagate: bool = param(False, "false (the authors'): every block calibrates on the dense model's "
                                   "activations; true: on the outputs of the already-quantized blocks")

    def storage(self) -> Storage:
        return Storage.NONE  # the scales are folded into the norms too (outside the Linears)

    def level(self) -> str:
        return f"w{self.bits}g{self.group_size}" + ("" if self.clip else "-noclip") + \
            ("-prop" if self.propagate else "")

    def check_linears(self, lins):
        if "lm_head" in lins:
            raise ConfigError("awq: targets.lm_head=true is not supported; valid: lm_head=false")

    @torch.no_grad()
    def compress(self, model, calib=None):
        if calib is None:
            raise ConfigError("awq needs calibration data (calib is None)")
        lins = target_linears(model, self.targets)
        self.check_linears(lins)
        layers = decoder_layers(model)
        self._layers = layers
        self._todo: dict[int, set[str]] = {}
        for i in self.targets.layer_range(len(layers)):
            check_llama_like(layers[i], "awq", model)
            self._todo[i] = {n for n in lins if n.startswith(f"layers.{i}.")}
        self._inputs: dict[str, torch.Tensor] = {}
        self._attn_kw: dict[int, dict] = {}
        self.awq_scales: dict[str, torch.Tensor] = {}
        self.awq_clips: dict[str, list[torch.Tensor]] = {}
        self._layer_facts: dict[str, dict[str, Any]] = {}
        self.clear_grids()
        handles = [layers[i].self_attn.register_forward_pre_hook(self._kw_hook(i), with_kwargs=True)
                   for i in self._todo]
        try:
            run_sequential(model, calib, self.targets, self.stats(), self.compress_layer, propagate=self.propagate,
                           desc=self.name, group_rule=self.compress_group)
        finally:
            for h in handles:
                h.remove()
            self._inputs.clear()
            self._attn_kw.clear()
        return self.facts(lins, self._layer_facts)

    def _kw_hook(self, i):
        def hook(mod, args, kwargs):
            if i not in self._attn_kw:
                self._attn_kw[i] = {k: v for k, v in kwargs.items()
                                    if k not in ("hidden_states", "past_key_values", "past_key_value", "cache")}
        return hook

    def compress_layer(self, name, linear, stat):
        return self.compress_group([name], [linear], stat)[name]

    def compress_group(self, names, linears, stat):
        """Collect the block's inputs; when every targeted Linear of the block has its input, run AWQ on it."""
        i = int(names[0].split(".")[1])
        for n in names:
            self._inputs[n] = stat
        if all(n in self._inputs for n in self._todo[i]):
            self._block(i)
        return {n: {} for n in names}

    def _block(self, i: int) -> None:
        layer, P = self._layers[i], f"layers.{i}."
        tgt = {n[len(P):] for n in self._todo[i]}
        X = {n[len(P):]: self._inputs.pop(n) for n in list(self._todo[i])}
        mod = lambda n: submodule(layer, n)  # noqa: E731
        # (previous op, Linears, input, inspected module, its keyword arguments), in the reference's order
        cand = []
        attn, mlp = norm_groups(layer)
        if set(attn.names) <= tgt:
            cand.append((attn.norm, attn.names, attn.inspect, self._attn_kw.get(i, {})))
        v, o = mod("self_attn.v_proj"), mod("self_attn.o_proj")
        if {"self_attn.v_proj", "self_attn.o_proj"} <= tgt and v.weight.shape == o.weight.shape:
            cand.append((v, ("self_attn.o_proj",), o, {}))
        if set(mlp.names) <= tgt:
            cand.append((mlp.norm, mlp.names, mlp.inspect, {}))
        if {"mlp.up_proj", "mlp.down_proj"} <= tgt:
            cand.append((mod("mlp.up_proj"), ("mlp.down_proj",), mod("mlp.down_proj"), {}))
        found = []
        for prev, names, inspect, kw in cand:
            s, ratio, loss = search_scale([mod(n) for n in names], X[names[0]], inspect, kw, self.bits,
                                          self.group_size, self.n_grid)
            found.append((prev, names, s))
            for n in names:
                self._layer_facts.setdefault(P + n, {}).update({"awq_ratio": ratio, "awq_loss": loss})
        for prev, names, s in found:  # apply_scale
            if isinstance(prev, nn.Linear):
                sp = s.to(prev.weight.device, prev.weight.dtype)
                prev.weight[-sp.size(0):].div_(sp.view(-1, 1))
                if prev.bias is not None:
                    prev.bias.div_(sp.view(-1))
            else:
                sp = s.to(prev.weight.device, prev.weight.dtype)
                prev.weight.div_(sp)
                if getattr(prev, "bias", None) is not None:
                    prev.bias.div_(sp)
            for n in names:
                fc = mod(n)
                fc.weight.mul_(s.view(1, -1).to(fc.weight.device, fc.weight.dtype))
            seen = set()
            for n in names:  # the recorded inputs, each tensor once (q/k/v share one)
                if id(X[n]) not in seen:
                    seen.add(id(X[n]))
                    X[n].div_(s.view(1, -1).to(X[n].device, X[n].dtype))
            self.awq_scales[P + names[0]] = s.detach().float().cpu()
        for n in sorted(tgt, key=list(dict(layer.named_modules())).index):
            fc = mod(n)
            if self.clip and not any(k in n for k in NO_CLIP):
                mv = search_clip(fc.weight.data, X[n], self.bits, self.group_size, self.n_grid, self.max_shrink)
                self.awq_clips[P + n] = [m.detach().float().cpu() for m in mv]
            else:
                mv = None
            if mv is not None:
                apply_clip_(fc.weight.data, mv, self.group_size)
        for n in tgt:
            fc = mod(n)
            fc.weight.data = awq_qdq(fc.weight.data, self.bits, self.group_size)
        X.clear()

    def facts(self, lins, layer_facts):
        n_w = sum(lin.weight.numel() for lin in lins.values())
        eff = sum(effective_bits(self.bits, lin.in_features, self.group_size) * lin.weight.numel()
                  for lin in lins.values())
        ratios = [f["awq_ratio"] for f in layer_facts.values() if "awq_ratio" in f]
        return {"effective_bits": eff / max(n_w, 1), "n_linears": len(lins), "scaled_groups": len(self.awq_scales),
                "clipped_linears": len(self.awq_clips),
                "mean_ratio": sum(ratios) / len(ratios) if ratios else None}
