"""Conformance over the architectures of lcc/archs.py (tiny random models from transformers' config classes:
dense, MoE, sliding window, fused projections, parallel residual, QK-norm, Conv1D): every compressor on a KL job
and task=passkey with a weight compressor and with kv, each a real ``lcc.job.run``. Each runs with full coverage
(every attention / MLP / expert weight changed; every attention wrapped by kv or hooked by a press) or is refused before compressing
with a message naming the architecture. ``scripts/architectures.py`` runs the same cases into
docs/architectures.md."""
from __future__ import annotations

import pytest

from lcc.archs import ARCHS
from lcc.conformance import COMPRESSORS, NEW_COMPRESSORS, TASK_CASES, run_case


def test_the_matrix_covers_the_kinds_of_architecture():
    feats = " ".join(f for _, f in ARCHS.values())
    assert len(ARCHS) >= 15
    for kind in ("MoE", "sliding window", "fused", "parallel residual", "QK-norm", "Conv1D", "shared expert"):
        assert kind in feats, kind


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_compressor_runs_with_full_coverage_or_is_refused(arch, tmp_path):
    cases = [(c, "kl") for c in COMPRESSORS] + [(c, t) for t, c in TASK_CASES]
    bad = {}
    for comp, task in cases:
        r = run_case(arch, comp, task, tmp_path / f"{comp}-{task}")
        if r["status"] == "failed":
            bad[f"{comp}/{task}"] = r["reason"][:300]
    assert not bad, bad


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_new_compressor_runs_with_full_coverage_or_is_refused(arch, tmp_path):
    """The formats, smoothquant / awq / rotate and the KV-eviction presses (lcc.conformance.NEW_COMPRESSORS) on a KL
    job; presses read the text in chunks so their eviction runs between reads. Llama is supported by all."""
    res = {c: run_case(arch, c, "kl", tmp_path / c) for c in NEW_COMPRESSORS}
    bad = {c: r["reason"][:300] for c, r in res.items() if r["status"] == "failed"}
    assert not bad, bad
    if arch == "llama":
        assert {c: r["status"] for c, r in res.items()} == {c: "ok" for c in NEW_COMPRESSORS}


@pytest.mark.parametrize("comp", ["smoothquant", "awq", "rotate"])
def test_llama_only_compressors_refuse_naming_the_model_before_changing_a_weight(comp):
    import torch

    from lcc import ConfigError
    from lcc.archs import tiny_model
    from lcc.compressors.base import build

    model = tiny_model("olmo2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c = build({"name": comp})
    with pytest.raises(ConfigError, match=r"Olmo2ForCausalLM \(olmo2\) is not supported by " + comp):
        c.compress(model, torch.randint(0, 256, (2, 16)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_presses_find_fused_attention_and_refuse_queries_they_cannot_recompute():
    from lcc import ConfigError
    from lcc.archs import BASE, tiny_model
    from lcc.compressors.base import build

    phi3 = tiny_model("phi3")  # fused qkv_proj: the cache-only presses hook every attention
    assert build({"name": "streaming_llm"}).compress(phi3)["n_attention"] == BASE["num_hidden_layers"]
    for arch, why in (("phi3", "no separate q_proj"), ("stablelm", "partial_rotary_factor=0.25"),
                      ("olmo2", "normalizes all heads together"), ("opt", "no Llama-style rotary"),
                      ("cohere", "interleaved")):
        with pytest.raises(ConfigError, match=why):
            build({"name": "snapkv"}).check_targets(tiny_model(arch))
    build({"name": "snapkv"}).check_targets(tiny_model("qwen3"))  # per-head q_norm, full RoPE: supported


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])
def test_scale_folding_refuses_gemma_norms(arch):
    """Gemma's RMSNorm computes x * (1 + weight), and Gemma2/3's post_attention_layernorm normalizes the attention
    output: a scale folded into either would change the model, so smoothquant and awq refuse them."""
    from lcc import ConfigError
    from lcc.archs import tiny_model
    from lcc.compressors.structure import check_llama_like

    model = tiny_model(arch)
    with pytest.raises(ConfigError, match=r"\(1 \+ weight\)"):
        check_llama_like(model.model.layers[0], "awq", model)
    check_llama_like(tiny_model("stablelm").model.layers[0], "awq")  # LayerNorm with bias: weight and bias scale
