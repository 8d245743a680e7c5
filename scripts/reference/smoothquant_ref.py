"""THE AUTHORS' CODE, transcribed for a reference check (not lcc's implementation).

Repository: https://github.com/mit-han-lab/smoothquant
Commit:     c61476d728e42ae0d8a35e7e78494edcac3237b5 (2024-07-12)
Paths:      smoothquant/calibration.py (get_act_scales), smoothquant/smooth.py (smooth_ln_fcs_llama_like,
            smooth_lm: the Llama branch), smoothquant/fake_quant.py (quantize_weight_per_channel_absmax,
            quantize_activation_per_token_absmax, W8A8Linear.forward, quantize_llama_like's choice of Linears)
License:    MIT, Copyright (c) 2022 MIT HAN Lab (the notice is reproduced at the end of this file).

Verbatim function bodies except: the data set loading of get_act_scales is replaced by a given tensor of token
ids [n_samples, seqlen] (one sample per forward, as there); the isinstance checks on transformers classes are
kept for LlamaRMSNorm; W8A8Linear is applied as a forward pre-hook on the existing Linear (its forward quantizes
the input per token, then F.linear with the already-quantized weight: the same computation).
"""
import functools

import torch
import torch.nn as nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm


def get_act_scales(model, input_ids):
    model.eval()
    device = next(model.parameters()).device
    act_scales = {}

    def stat_tensor(name, tensor):
        hidden_dim = tensor.shape[-1]
        tensor = tensor.view(-1, hidden_dim).abs().detach()
        comming_max = torch.max(tensor, dim=0)[0].float().cpu()
        if name in act_scales:
            act_scales[name] = torch.max(act_scales[name], comming_max)
        else:
            act_scales[name] = comming_max

    def stat_input_hook(m, x, y, name):
        if isinstance(x, tuple):
            x = x[0]
        stat_tensor(name, x)

    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            hooks.append(
                m.register_forward_hook(functools.partial(stat_input_hook, name=name))
            )

    with torch.no_grad():
        for i in range(input_ids.shape[0]):
            model(input_ids[i:i + 1].to(device))

    for h in hooks:
        h.remove()

    return act_scales


@torch.no_grad()
def smooth_ln_fcs_llama_like(ln, fcs, act_scales, alpha=0.5):
    if not isinstance(fcs, list):
        fcs = [fcs]
    assert isinstance(ln, LlamaRMSNorm)
    for fc in fcs:
        assert isinstance(fc, nn.Linear)
        assert ln.weight.numel() == fc.in_features == act_scales.numel()
    device, dtype = fcs[0].weight.device, fcs[0].weight.dtype
    act_scales = act_scales.to(device=device, dtype=dtype)
    weight_scales = torch.cat(
        [fc.weight.abs().max(dim=0, keepdim=True)[0] for fc in fcs], dim=0
    )
    weight_scales = weight_scales.max(dim=0)[0].clamp(min=1e-5)
    scales = (
        (act_scales.pow(alpha) / weight_scales.pow(1 - alpha))
        .clamp(min=1e-5)
        .to(device)
        .to(dtype)
    )

    ln.weight.div_(scales)
    for fc in fcs:
        fc.weight.mul_(scales.view(1, -1))


@torch.no_grad()
def smooth_lm(model, scales, alpha=0.5):
    for name, module in model.named_modules():
        if isinstance(module, LlamaDecoderLayer):
            attn_ln = module.input_layernorm  # attention forward norm
            qkv = [
                module.self_attn.q_proj,
                module.self_attn.k_proj,
                module.self_attn.v_proj,
            ]

            qkv_input_scales = scales[name + ".self_attn.q_proj"]
            smooth_ln_fcs_llama_like(attn_ln, qkv, qkv_input_scales, alpha)

            ffn_ln = module.post_attention_layernorm  # feed forward norm
            fcs = [module.mlp.gate_proj, module.mlp.up_proj]
            fcs_input_scales = scales[name + ".mlp.gate_proj"]

            smooth_ln_fcs_llama_like(ffn_ln, fcs, fcs_input_scales, alpha)


@torch.no_grad()
def quantize_weight_per_channel_absmax(w, n_bits=8):
    # w: (out_features, in_features)
    scales = w.abs().max(dim=-1, keepdim=True)[0]
    q_max = 2 ** (n_bits - 1) - 1
    scales.clamp_(min=1e-5).div_(q_max)
    w.div_(scales).round_().mul_(scales)
    return w


@torch.no_grad()
def quantize_activation_per_token_absmax(t, n_bits=8):
    t_shape = t.shape
    t.view(-1, t_shape[-1])
    scales = t.abs().max(dim=-1, keepdim=True)[0]
    q_max = 2 ** (n_bits - 1) - 1
    scales.clamp_(min=1e-5).div_(q_max)
    t.div_(scales).round_().mul_(scales)
    return t


def quantize_llama_like(model, n_bits=8):
    """fake_quant.py quantize_llama_like (weight_quant="per_channel", act_quant="per_token"): every Linear of
    the attention (q, k, v, o) and the MLP (gate, up, down) becomes W8A8Linear."""
    for name, m in model.model.named_modules():
        if isinstance(m, LlamaDecoderLayer):
            for lin in (m.self_attn.q_proj, m.self_attn.k_proj, m.self_attn.v_proj, m.self_attn.o_proj,
                        m.mlp.gate_proj, m.mlp.up_proj, m.mlp.down_proj):
                quantize_weight_per_channel_absmax(lin.weight.data, n_bits)
                lin.register_forward_pre_hook(
                    lambda mod, args: (quantize_activation_per_token_absmax(args[0].clone(), n_bits),))
    return model


# MIT License
#
# Copyright (c) 2022 MIT HAN Lab
#
# Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
# documentation files (the "Software"), to deal in the Software without restriction, including without limitation
# the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
# permit persons to whom the Software is furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in all copies or substantial portions of
# the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
# WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
# COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
# OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
