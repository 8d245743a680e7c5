"""Tiny random checkpoints of the architectures users bring, built from transformers' own config classes (hidden 64,
2 layers): for the conformance test (``tests/test_architectures.py``) and the support matrix
(``scripts/architectures.py`` writes ``docs/architectures.md``). Structure only: random weights, no numbers worth
reporting. ``lcc.models.save_tiny(arch, folder)`` writes one as a ``model=hf model.name_or_path=<folder>``
checkpoint with the embedded SmolLM2 tokenizer; the conformance matrix that runs them is ``lcc.conformance``.
"""
from __future__ import annotations

from typing import Any

BASE: dict[str, Any] = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=128, max_position_embeddings=4096)
#: model_type -> (config overrides, features)
ARCHS: dict[str, tuple[dict[str, Any], str]] = {
    "llama": ({}, "dense"),
    "mistral": (dict(sliding_window=64), "dense, sliding window"),
    "qwen2": (dict(use_sliding_window=True, sliding_window=64, max_window_layers=1), "dense, sliding window (hybrid)"),
    "qwen3": ({}, "dense, QK-norm"),
    "olmo2": ({}, "dense, QK-norm, post-norm"),
    "gemma2": (dict(sliding_window=64, head_dim=16), "dense, hybrid sliding window, soft-capping (eager attention)"),
    "gemma3_text": (dict(sliding_window=64, head_dim=16), "dense, hybrid sliding window, QK-norm"),
    "granite": ({}, "dense"),
    "stablelm": ({}, "dense, partial rotary"),
    "cohere": ({}, "dense, parallel residual"),
    "phi": ({}, "dense, parallel residual"),
    "phi3": (dict(pad_token_id=0), "fused qkv_proj and gate_up_proj"),
    "gpt_neox": ({}, "fused query_key_value, parallel residual"),
    "falcon": ({}, "fused query_key_value, parallel residual, FalconLinear"),
    "gpt2": ({}, "Conv1D layers (transposed Linear)"),
    "opt": (dict(ffn_dim=128), "fc1/fc2 naming, k_proj before q_proj"),
    "mixtral": (dict(num_local_experts=4, num_experts_per_tok=2), "MoE (fused 3-D experts)"),
    "qwen3_moe": (dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32), "MoE, QK-norm"),
    "olmoe": (dict(num_experts=4, num_experts_per_tok=2), "MoE, QK-norm"),
    "qwen2_moe": (dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=64), "MoE + shared expert"),
    "gpt_oss": (dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=64, head_dim=16),
                "MoE (transposed experts with biases), sliding window, attention sinks"),
    "deepseek_v3": (dict(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                         first_k_dense_replace=1,
                         n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8,
                         qk_nope_head_dim=8, v_head_dim=16), "MoE + shared experts, MLA attention"),
}


def tiny_config(arch: str, vocab_size: int = 256, **overrides: Any):
    from transformers import AutoConfig

    if arch not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    kw = {**BASE, "vocab_size": vocab_size, **ARCHS[arch][0], **overrides}
    return AutoConfig.for_model(arch, **kw)


def tiny_model(arch: str, vocab_size: int = 256, seed: int = 0, attn_implementation: str | None = None,
               **overrides: Any):
    """A seeded random model of ``arch``; the attention implementation is the model's own choice unless given."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, vocab_size, **overrides)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    with torch.no_grad():  # peaked distributions, as a trained model's (KL differences visible)
        head = model.get_output_embeddings()
        if head is not None and head.weight is not model.get_input_embeddings().weight:
            head.weight.mul_(8.0)
    return model.eval()
