"""Fingerprinted: editing this file invalidates the cached compressed weights (any file of lcc/compressors/).

Where the norms and Linears of a Llama-like decoder block are (Llama, Mistral, Qwen2, SmolLM2...): what the
scale-migrating and rotating compressors (smoothquant, awq, rotate) fold into each other.

A block has ``input_layernorm`` -> ``self_attn.{q,k,v}_proj`` -> ``self_attn.o_proj`` (into the residual) and
``post_attention_layernorm`` -> ``mlp.{gate,up}_proj`` -> ``mlp.down_proj`` (into the residual). A block of
another shape (fused qkv, MoE experts, parallel attention) is refused with one message naming what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lcc import ConfigError

ATTN_IN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_IN = ("mlp.gate_proj", "mlp.up_proj")
NEEDED = ("input_layernorm", "post_attention_layernorm", *ATTN_IN, "self_attn.o_proj", *MLP_IN, "mlp.down_proj")


@dataclass
class NormGroup:
    """Linears that read one norm's output: ``norm`` (RMSNorm/LayerNorm with a ``weight``), their block-relative
    ``names``, and the module whose output measures a change of them (``inspect``: the attention, the MLP)."""

    norm: nn.Module
    names: tuple[str, ...]
    inspect: nn.Module


def submodule(block: nn.Module, name: str) -> nn.Module | None:
    obj = block
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def model_name(model: nn.Module | None) -> str:
    """``LlamaForCausalLM (llama)``: how a refusal names the model."""
    if model is None:
        return "the model"
    return f"{type(model).__name__} ({getattr(getattr(model, 'config', None), 'model_type', '?')})"


def check_llama_like(block: nn.Module, who: str, model: nn.Module | None = None) -> None:
    """Raise ConfigError (naming the model, ``who`` and the block class) unless ``block`` is Llama-like; it only
    reads the block, so callers check every targeted block before changing any weight."""
    missing = [n for n in NEEDED if submodule(block, n) is None]
    name = model_name(model)
    if missing:
        raise ConfigError(f"{name} is not supported by {who}: it needs Llama-like decoder blocks (input_layernorm "
                          f"-> self_attn.q/k/v_proj, post_attention_layernorm -> mlp.gate/up_proj -> down_proj); "
                          f"{type(block).__name__} lacks {missing}")
    for n in ("input_layernorm", "post_attention_layernorm"):
        norm = submodule(block, n)
        if getattr(norm, "weight", None) is None:
            raise ConfigError(f"{name} is not supported by {who}: {n} of {type(block).__name__} has no weight to "
                              f"fold a scale into")
        if getattr(norm, "bias", None) is not None and not isinstance(norm, nn.LayerNorm):
            raise ConfigError(f"{name} is not supported by {who}: {n} of {type(block).__name__} has an unexpected "
                              f"bias")
        if not scales_with_weight(norm):
            raise ConfigError(f"{name} is not supported by {who}: its {type(norm).__name__} ({n}) does not scale "
                              f"its output with its weight (e.g. Gemma's x * (1 + weight)), so a scale cannot be "
                              f"folded into it")
    if submodule(block, "pre_feedforward_layernorm") is not None:
        raise ConfigError(f"{name} is not supported by {who}: in {type(block).__name__} post_attention_layernorm "
                          f"normalizes the attention output and pre_feedforward_layernorm feeds the MLP (Gemma2/3 "
                          f"sandwich norms)")


def scales_with_weight(norm: nn.Module) -> bool:
    """Whether ``norm(x)`` doubles when its weight (and bias) double, checked on a copy (the model is untouched)."""
    import copy

    import torch

    n = copy.deepcopy(norm).float()
    x = torch.randn(3, n.weight.shape[-1], generator=torch.Generator().manual_seed(0)).to(n.weight.device)
    with torch.no_grad():
        if not n.weight.abs().sum() > 0:
            n.weight.fill_(1.0)  # an all-zero weight (Gemma's init) would pass any test
        y = n(x)
        n.weight.mul_(2)
        if getattr(n, "bias", None) is not None:
            n.bias.mul_(2)
        return bool(torch.allclose(n(x), 2 * y, rtol=1e-4, atol=1e-5))


def norm_groups(block: nn.Module) -> list[NormGroup]:
    """The two norm -> Linears groups of a Llama-like block (attention input, MLP input)."""
    return [NormGroup(block.input_layernorm, ATTN_IN, block.self_attn),
            NormGroup(block.post_attention_layernorm, MLP_IN, block.mlp)]
