"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

SmoothQuant (Xiao et al. 2023, mit-han-lab/smoothquant): migrate activation outliers into the weights, then
INT8 W8A8 with per-channel weights and per-token dynamic activations.

As the reference (``smoothquant/calibration.py`` ``get_act_scales``, ``smoothquant/smooth.py``
``smooth_ln_fcs_llama_like`` / ``smooth_lm``, ``smoothquant/fake_quant.py``):

1. activation maxima: the dense model runs over every calibration sample, one sample per forward; a hook on the
   first Linear after each norm (``q_proj``, ``gate_proj``) keeps max |x_j| per input channel over all tokens;
2. per norm -> Linears group (``input_layernorm`` -> q/k/v, ``post_attention_layernorm`` -> gate/up):
   ``s_j = max|X_j|^alpha / max_i(max|W_ij| over the group's Linears)^(1-alpha)``, both clamped at 1e-5, in the
   weights' dtype; the norm weight is divided by s and the Linears' input columns multiplied by s (exact: the
   model's function is unchanged);
3. every targeted Linear (o_proj and down_proj too, unsmoothed, as the reference's ``quantize_llama_like``):
   weights per output channel on the symmetric absmax grid ``round(w / s) * s``, ``s = max|w| / (2^(b-1) - 1)``
   (levels -127..127 at 8 bits: the reference's grid, not lcc's ``sym`` GPTQ grid), and activations per token
   on the same grid at run time by a forward pre-hook (kept in the model's ``_lcc_act_quant_hooks``, as
   ``quant_wa``'s; ``QuantWA.remove`` takes them off).

A group is smoothed only when all its Linears are targeted (a norm feeds all of them). The scales are
recorded in the facts as counts; ``smooth_scales`` keeps them on the instance for comparisons.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lcc import ConfigError
from lcc.compressors.base import Compressor, Storage, decoder_layers, fraction, ints, param, target_linears
from lcc.compressors.quant_wa import BITS, HOOK_ATTR
from lcc.compressors.structure import check_llama_like, norm_groups


def absmax_fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric absmax fake quantization along the last dim (one scale per row / token): the reference's
    ``quantize_weight_per_channel_absmax`` and ``quantize_activation_per_token_absmax``."""
    q_max = 2 ** (bits - 1) - 1
    scales = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5) / q_max
    return torch.round(x / scales) * scales


def smoothing_scales(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """The migration scales of one norm -> Linears group (the reference's formula, in the weights' dtype)."""
    w0 = weights[0]
    act = act_max.to(device=w0.device, dtype=w0.dtype)
    wmax = torch.cat([w.abs().max(dim=0, keepdim=True)[0] for w in weights], dim=0).max(dim=0)[0].clamp(min=1e-5)
    return (act.pow(alpha) / wmax.pow(1 - alpha)).clamp(min=1e-5).to(w0.dtype)


@torch.no_grad()
def collect_act_max(model: nn.Module, calib: torch.Tensor, lins: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """max |x_j| per input channel of every Linear in ``lins`` over all calibration tokens (fp32, CPU), from the
    dense model run one sample per forward (as the reference's ``get_act_scales``)."""
    out: dict[str, torch.Tensor] = {}

    def hook(name):
        def f(mod, args, output):
            x = args[0]
            m = x.reshape(-1, x.shape[-1]).abs().detach().max(dim=0)[0].float().cpu()
            out[name] = torch.maximum(out[name], m) if name in out else m
        return f

    dev = model.get_input_embeddings().weight.device
    handles = [lin.register_forward_hook(hook(n)) for n, lin in lins.items()]
    was_training = model.training
    model.eval()
    try:
        for s in range(calib.shape[0]):
            model(input_ids=calib[s:s + 1].to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return out


def install_absmax_act_quant(model: nn.Module, lins: dict[str, nn.Linear], bits: int) -> int:
    """Per-token absmax fake quantization of every Linear's input at run time; returns the number of hooks."""
    def hook(mod, args):
        return (absmax_fake_quant(args[0], bits),) + tuple(args[1:])
    handles = getattr(model, HOOK_ATTR, [])
    for lin in lins.values():
        handles.append(lin.register_forward_pre_hook(hook))
    setattr(model, HOOK_ATTR, handles)
    return len(lins)


class SmoothQuant(Compressor):
    """SmoothQuant: activation outliers migrated into the weights (alpha), then INT8 per-channel weights and
    per-token dynamic activations."""

    name = "smoothquant"
    alpha: float = param(0.5, "migration strength: s = max|X|^alpha / max|W|^(1-alpha)",
                         fraction(hi_closed=True))
    w_bits: int = param(8, "weight bits (per output channel, symmetric absmax)", ints(2, 8))
    a_bits: int = param(8, "activation bits (per token, symmetric absmax, dynamic); 16 = untouched", BITS)

    def needs_calibration(self) -> bool:
        return True

    def level(self) -> str:
        return f"w{self.w_bits}a{self.a_bits}-a{self.alpha:g}"

    def storage(self) -> Storage:
        return Storage.NONE  # norm weights change too (outside the Linears), and activation hooks

    def acts_at_runtime(self) -> bool:
        return self.a_bits != 16

    @torch.no_grad()
    def compress(self, model, calib=None):
        if calib is None:
            raise ConfigError("smoothquant needs calibration data (calib is None)")
        layers = decoder_layers(model)
        lins = target_linears(model, self.targets)
        if "lm_head" in lins:
            raise ConfigError("smoothquant: targets.lm_head=true is not supported (no norm feeds the head alone); "
                              "valid: lm_head=false")
        groups = []  # (block index, NormGroup) whose Linears are all targeted
        for i in self.targets.layer_range(len(layers)):
            check_llama_like(layers[i], "smoothquant", model)
            groups += [(i, g) for g in norm_groups(layers[i]) if all(f"layers.{i}.{n}" in lins for n in g.names)]
        leaders = {f"layers.{i}.{g.names[0]}": lins[f"layers.{i}.{g.names[0]}"] for i, g in groups}
        act_max = collect_act_max(model, calib, leaders)
        self.smooth_scales: dict[str, torch.Tensor] = {}
        for i, g in groups:
            fcs = [lins[f"layers.{i}.{n}"] for n in g.names]
            key = f"layers.{i}.{g.names[0]}"
            s = smoothing_scales(act_max[key], [fc.weight for fc in fcs], self.alpha)
            g.norm.weight.div_(s)
            if getattr(g.norm, "bias", None) is not None:
                g.norm.bias.div_(s)
            for fc in fcs:
                fc.weight.mul_(s.view(1, -1))
            self.smooth_scales[key] = s.detach().float().cpu()
        self.act_max = act_max
        for lin in lins.values():
            lin.weight.data.copy_(absmax_fake_quant(lin.weight.data, self.w_bits))
        hooks = install_absmax_act_quant(model, lins, self.a_bits) if self.a_bits != 16 else 0
        n_w = sum(lin.weight.numel() for lin in lins.values())
        eff = sum((self.w_bits + 16 / lin.in_features) * lin.weight.numel() for lin in lins.values())
        return {"n_linears": len(lins), "smoothed_groups": len(groups), "act_quant_hooks": hooks,
                "effective_bits": eff / max(n_w, 1)}  # one fp16 scale per output channel
