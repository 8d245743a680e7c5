"""Where the norms and Linears of a Llama-like decoder block are (Llama, Mistral, Qwen2, SmolLM2...): what the
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


def check_llama_like(block: nn.Module, who: str) -> None:
    missing = [n for n in NEEDED if submodule(block, n) is None]
    if missing:
        raise ConfigError(f"{who} needs Llama-like decoder blocks (input_layernorm -> self_attn.q/k/v_proj, "
                          f"post_attention_layernorm -> mlp.gate/up_proj -> down_proj); {type(block).__name__} "
                          f"lacks {missing}")
    for n in ("input_layernorm", "post_attention_layernorm"):
        norm = submodule(block, n)
        if getattr(norm, "weight", None) is None:
            raise ConfigError(f"{who}: {n} of {type(block).__name__} has no weight to fold a scale into")
        if getattr(norm, "bias", None) is not None and not isinstance(norm, nn.LayerNorm):
            raise ConfigError(f"{who}: {n} of {type(block).__name__} has an unexpected bias")


def norm_groups(block: nn.Module) -> list[NormGroup]:
    """The two norm -> Linears groups of a Llama-like block (attention input, MLP input)."""
    return [NormGroup(block.input_layernorm, ATTN_IN, block.self_attn),
            NormGroup(block.post_attention_layernorm, MLP_IN, block.mlp)]
