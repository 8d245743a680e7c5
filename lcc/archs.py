"""Tiny random checkpoints of the architectures users bring, built from transformers' own config classes (hidden 64,
2 layers): for the conformance test (``tests/test_architectures.py``) and the support matrix
(``scripts/architectures.py`` writes ``docs/architectures.md``). Structure only: random weights, no numbers worth
reporting. ``save_tiny(arch, folder)`` writes one as a ``model=hf model.name_or_path=<folder>`` checkpoint with
the embedded SmolLM2 tokenizer.
"""
from __future__ import annotations

from pathlib import Path
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


def smollm2_tokenizer():
    """The embedded SmolLM2 tokenizer (from the dequantized copy when present, else read from the GGUF)."""
    from transformers import AutoTokenizer

    from lcc.models import SMOLLM2_FILE, cache_root, smollm2_gguf

    for root in (cache_root(), Path.home() / ".cache" / "lcc"):
        done = sorted((root / "models").glob(f"{Path(SMOLLM2_FILE).stem}-*[0-9]/DONE"))
        if done:
            return AutoTokenizer.from_pretrained(done[-1].parent)
    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def save_tiny(arch: str, folder: str | Path, tokenizer=None, seed: int = 0) -> Path:
    """Write a tiny ``arch`` checkpoint with the SmolLM2 tokenizer (a ``model=hf`` folder)."""
    tok = tokenizer or smollm2_tokenizer()
    model = tiny_model(arch, vocab_size=len(tok), seed=seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ---- conformance: every compressor on every architecture, as real jobs ----------------------------------------
#: the compressors of the matrix (each at its default level) and the task jobs
COMPRESSORS = ("magnitude", "random", "quant", "wanda", "sparsegpt", "gptq", "quant_wa", "mixed", "kv")
TASK_CASES = (("passkey", "quant"), ("passkey", "kv"))
FULL_KINDS = ("attention", "mlp", "experts", "shared_experts")


def case_overrides(arch: str, compressor: str, task: str = "kl") -> list[str]:
    """The overrides of one conformance job (``model=tiny_arch``: byte tokenizer, 256-token vocabulary)."""
    common = ["model=tiny_arch", f"model.arch={arch}", "logger=none", f"compressor={compressor}",
              "calib.n_samples=4", "calib.seqlen=64", "cache.enabled=false", "resume=false"]
    if task == "kl":
        return common + ["n_docs=1", "ctx.tokens=128"]
    return common + [f"task={task}", "task.n_samples=1", "task.depths=[0.5]", "ctx.tokens=512"]


def run_case(arch: str, compressor: str, task: str, out: str | Path) -> dict[str, Any]:
    """One conformance job through ``lcc.job.run``: ``{"status": "ok" | "refused" | "failed", "reason",
    "coverage"}``. ``ok`` means it ran and every weight of the attention / MLP / experts kinds was changed (weight
    compressors) or every attention module was wrapped (kv); ``refused`` means a ConfigError raised before
    compressing that names the architecture; anything else is ``failed``."""
    from hydra import compose, initialize_config_dir

    import lcc.sweep  # noqa: F401  (the compressor configs and resolvers)
    from lcc import ConfigError
    from lcc.job import run

    with initialize_config_dir(config_dir=str(Path(__file__).parent / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=case_overrides(arch, compressor, task) + [f"output_dir={out}"])
    try:
        res = run(cfg)
    except ConfigError as e:
        named = any(s in str(e) for s in (arch, tiny_config(arch).architectures[0] if tiny_config(arch).architectures
                                          else arch)) or "ForCausalLM" in str(e)
        return {"status": "refused" if named else "failed", "reason": str(e), "coverage": None}
    except Exception as e:  # noqa: BLE001 -- the matrix records every failure
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}", "coverage": None}
    cov = (res.get("weights") or {}).get("coverage") or {}
    if compressor == "kv":
        n = (res.get("compress_info") or {}).get("n_attention", 0)
        ok = n == BASE["num_hidden_layers"]
        return {"status": "ok" if ok else "failed", "coverage": cov,
                "reason": "" if ok else f"kv wrapped {n} attention modules of {BASE['num_hidden_layers']}"}
    short = [k for k in FULL_KINDS if k in cov and cov[k]["changed"] != cov[k]["params"]]
    return {"status": "failed" if short else "ok", "coverage": cov,
            "reason": f"kinds not fully compressed: {short}" if short else ""}
