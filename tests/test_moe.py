"""MoE experts, routers, Conv1D and fused projections as compressor targets (lcc/compressors/layers.py), coverage
(lcc/coverage.py), and greedy decoding on sliding-window caches (lcc/tasks/score.py)."""
from __future__ import annotations

import pytest
import torch

from lcc import ConfigError
from lcc.archs import tiny_model
from lcc.compressors import build
from lcc.compressors.base import Targets, target_linears, weight_fingerprint
from lcc.compressors.engine import HessianStats, NormStats, run_sequential
from lcc.coverage import coverage

CALIB = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(0))


def test_fused_experts_are_targets_with_views_into_the_model():
    m = tiny_model("mixtral")
    lins = target_linears(m, Targets())
    experts = {n: v for n, v in lins.items() if ".experts." in n}
    assert len(experts) == 2 * 4 * 2 and "layers.1.mlp.experts.3.down_proj" in experts
    assert not any(n.endswith("mlp.gate") for n in lins), "the router is off by default"
    v = experts["layers.0.mlp.experts.2.gate_up_proj"]
    assert v.weight.shape == (256, 64) and v.in_features == 64
    v.weight.mul_(0)  # a view: writing it writes the fused parameter
    assert m.model.layers[0].mlp.experts.gate_up_proj[2].abs().sum() == 0
    assert m.model.layers[0].mlp.experts.gate_up_proj[1].abs().sum() > 0
    # gpt-oss stores experts transposed ([in, out]): the view is [out, in]
    o = target_linears(tiny_model("gpt_oss"), Targets())
    assert o["layers.0.mlp.experts.0.gate_up_proj"].weight.shape == (256, 64)
    assert o["layers.0.mlp.experts.0.down_proj"].weight.shape == (64, 128)


@pytest.mark.parametrize("modules, n", [(["experts"], 16), (["router"], 2), (["mlp.gate"], 2), (["attn"], 8),
                                        (["mlp"], 16), (["shared_experts"], None)])
def test_targets_select_experts_router_shared(modules, n):
    m = tiny_model("mixtral")
    t = Targets(modules=modules)
    if n is None:
        with pytest.raises(ConfigError, match="match no module"):
            build({"name": "quant", "targets": {"modules": modules}}).check_targets(m)
        return
    assert len(target_linears(m, t)) == n
    q = tiny_model("qwen2_moe")
    shared = target_linears(q, Targets(modules=["shared_experts"]))
    assert sorted(shared) == [f"layers.{i}.mlp.shared_expert.{p}" for i in (0, 1)
                              for p in ("down_proj", "gate_proj", "up_proj")]
    assert "layers.0.mlp.shared_expert_gate" in target_linears(q, Targets(modules=["router"]))


def test_expert_statistics_come_from_the_tokens_routed_to_it():
    """The Hessian of expert e's gate_up / down is 2/n Σ xxᵀ over the calibration tokens the router sent to e."""
    m = tiny_model("mixtral")
    moe = m.model.layers[0].mlp
    seen = {}

    def rec(mod, args, out):
        seen.setdefault("h", []).append(args[0].reshape(-1, 64))
        seen.setdefault("idx", []).append(out[2])
    h = moe.gate.register_forward_hook(rec)
    with torch.no_grad():
        for s in range(len(CALIB)):
            m(CALIB[s:s + 1])
    h.remove()
    x, idx = torch.cat(seen["h"]), torch.cat(seen["idx"])
    got = {}

    class Keep(HessianStats):
        def pop(self, name):
            got[name] = super().pop(name)
            return got[name]
    run_sequential(m, CALIB, Targets(layers=[0, 1], modules=["experts"]), Keep(), lambda n, lin, s: {},
                   propagate=False)
    e = 3
    xe = x[(idx == e).any(-1)]
    torch.testing.assert_close(got[f"layers.0.mlp.experts.{e}.gate_up_proj"], 2 / len(xe) * xe.T @ xe,
                               rtol=1e-4, atol=1e-5)
    gate, up = torch.nn.functional.linear(xe, moe.experts.gate_up_proj[e]).chunk(2, -1)
    he = moe.experts.act_fn(gate) * up
    torch.testing.assert_close(got[f"layers.0.mlp.experts.{e}.down_proj"], 2 / len(he) * he.T @ he,
                               rtol=1e-4, atol=1e-5)


def test_an_expert_without_tokens_gets_the_recorded_rule_never_stays_dense():
    m = tiny_model("mixtral")
    def never_expert_0(mod, args, out):  # the router of block 0 never picks expert 0
        logits = out[0].clone()
        logits[:, 0] = float("-inf")
        v, i = torch.topk(torch.softmax(logits.float(), -1), 2, dim=-1)
        return logits, (v / v.sum(-1, keepdim=True)).to(out[1].dtype), i
    m.model.layers[0].mlp.gate.register_forward_hook(never_expert_0)
    lins = target_linears(m, Targets())
    before = {n: weight_fingerprint(v) for n, v in lins.items()}
    facts = build({"name": "gptq"}).compress(m, CALIB)
    rule = facts["no_calibration_tokens"]
    assert "layers.0.mlp.experts.0.gate_up_proj" in rule["linears"] and "H = I" in rule["rule"]
    assert all(weight_fingerprint(v) != before[n] for n, v in lins.items())
    # gptq with H = I is RTN on the same grid
    r = tiny_model("mixtral")
    from lcc.compressors.quantize import fake_quant_grid
    w = r.model.layers[0].mlp.experts.gate_up_proj.data[0]
    torch.testing.assert_close(lins["layers.0.mlp.experts.0.gate_up_proj"].weight, fake_quant_grid(w, 4, 128)[0])


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe", "olmoe", "qwen2_moe", "gpt_oss", "deepseek_v3", "gpt2",
                                  "opt", "phi3", "falcon"])
@pytest.mark.parametrize("name", ["quant", "magnitude", "wanda", "sparsegpt", "gptq"])
def test_every_weight_compressor_changes_every_targeted_matrix(arch, name):
    m = tiny_model(arch)
    comp = build({"name": name})
    lins = comp.touched_linears(m)
    before = {n: weight_fingerprint(v) for n, v in lins.items()}
    comp.compress(m, CALIB if comp.needs_calibration() else None)
    changed = {n for n, v in lins.items() if weight_fingerprint(v) != before[n]}
    assert changed == set(lins)
    cov = coverage(m, lins, changed)
    for kind in ("attention", "mlp", "experts", "shared_experts"):
        if kind in cov:
            assert cov[kind]["changed"] == cov[kind]["params"] > 0, (kind, cov)
    if "router" in cov:
        assert cov["router"]["targeted"] == 0
    if name in ("magnitude", "wanda", "sparsegpt"):
        zeros = sum(int((v.weight == 0).sum()) for v in lins.values())
        assert zeros == pytest.approx(0.5 * sum(v.weight.numel() for v in lins.values()), rel=0.02)
    with torch.no_grad():
        assert torch.isfinite(m(CALIB[:1]).logits).all()


def test_act_quant_on_experts_runs_the_per_expert_loop_and_comes_off():
    from lcc.compressors.quant_wa import QuantWA

    m = tiny_model("qwen3_moe")
    x = CALIB[:1]
    with torch.no_grad():
        dense = m(x).logits
    lins = {n: v for n, v in target_linears(m, Targets(modules=["experts"])).items()}
    hs = [v.register_forward_pre_hook(lambda mod, args: args) for v in lins.values()]
    with torch.no_grad():  # identity hooks: the per-expert loop equals the model's own experts forward
        torch.testing.assert_close(m(x).logits, dense, rtol=1e-5, atol=1e-5)
    for h in hs:
        h.remove()
    facts = build({"name": "quant_wa", "w_bits": 16, "a_bits": 4}).compress(m)
    assert facts["act_quant_hooks"] == 8 + 16
    with torch.no_grad():
        assert (m(x).logits - dense).abs().max() > 1e-3
    QuantWA.remove(m)
    assert not any("forward" in mod.__dict__ for mod in m.modules())
    with torch.no_grad():
        torch.testing.assert_close(m(x).logits, dense)


def test_kv_wraps_fused_attention_and_refuses_pre_rope_there():
    m = tiny_model("phi3")
    x = CALIB[:1]
    with torch.no_grad():
        dense = m(x).logits
    facts = build({"name": "kv", "bits": 2}).compress(m)
    assert facts["n_attention"] == 2
    with torch.no_grad():
        assert (m(x).logits - dense).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="pre_rope=true needs a separate k_proj.*Phi3Attention"):
        build({"name": "kv", "pre_rope": True}).check_targets(tiny_model("phi3"))


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "gemma2", "gemma3_text", "gpt_oss"])
def test_greedy_decoding_on_sliding_window_caches_equals_generate(arch):
    """The prompt is longer than the window (64): the teacher-forced answer is rolled back past it."""
    from lcc.forward import logits_fn
    from lcc.tasks.score import score_sample
    from lcc.tasks.synthetic import Sample

    m = tiny_model(arch)
    m.generation_config.pad_token_id = 0
    prompt = torch.randint(1, 256, (150,), generator=torch.Generator().manual_seed(1))
    ref = m.generate(prompt.view(1, -1), max_new_tokens=10, do_sample=False, min_new_tokens=10)[0, 150:].tolist()
    wrong = (ref[3] + 1) % 256
    answer = torch.tensor(ref[:3] + [wrong] + ref[4:6])  # greedy agrees with 3 answer tokens, then diverges
    s = Sample(depth=0.0, index=0, prompt=prompt, answer=answer, expected=["never"], needle_pos=0)
    got = score_sample(m, logits_fn(m, None), s, max_new=10, eos=set(), decode=lambda ids: "")
    assert got.generated == ref


def test_jobs_record_coverage_and_reduce_shows_it(tmp_path):
    """A real MoE job (model=tiny_arch, mixtral): coverage by kind in result.json, a column in reduce's CSV and a
    section of sensitivity.md; a target set that leaves the experts out says so in the coverage."""
    import pandas as pd

    from helpers import make_cfg
    from lcc.job import run
    from lcc.reduce import reduce

    base = ["model=tiny_arch", "model.arch=mixtral", "logger=none", "n_docs=1", "ctx.tokens=128",
            "cache.enabled=false", "calib.n_samples=4", "calib.seqlen=64"]
    full = run(make_cfg([*base, "compressor=gptq"], tmp_path / "s" / "gptq"))
    cov = full["weights"]["coverage"]
    assert cov["experts"] == {"params": 2 * (4 * 256 * 64 + 4 * 64 * 128), "targeted": cov["experts"]["params"],
                              "changed": cov["experts"]["params"]}
    assert cov["router"]["targeted"] == 0 and cov["embeddings"]["changed"] == 0
    attn = run(make_cfg([*base, "compressor=quant", "compressor.targets.modules=[attn]"], tmp_path / "s" / "attn"))
    assert attn["weights"]["coverage"]["experts"]["changed"] == 0
    _, text = reduce(tmp_path / "s", plots=False)
    assert "## Coverage" in text and "experts 100%" in text and "experts 0%" in text
    csv = pd.read_csv(tmp_path / "s" / "sensitivity.csv")
    assert set(csv.coverage) == {"attention 100% · experts 100%", "attention 100% · experts 0%"}


def test_unknown_experts_layout_is_refused_naming_the_model():
    m = tiny_model("mixtral")
    for layer in m.model.layers:  # strip the use_experts_implementation attributes: an unknown layout
        del layer.mlp.experts.has_gate
    with pytest.raises(ConfigError, match=r"MixtralForCausalLM \(mixtral\) is not supported by compressor quant.*"
                                          r"MixtralExperts"):
        build({"name": "quant"}).check_targets(m)
    build({"name": "kv"}).check_targets(m)  # kv does not touch the experts


@pytest.mark.parametrize("arch, attn, mlp", [("opt", ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                                                       "self_attn.out_proj"], ["fc1", "fc2"]),
                                             ("phi3", ["self_attn.o_proj", "self_attn.qkv_proj"],
                                              ["mlp.gate_up_proj", "mlp.down_proj"]),
                                             ("gpt_neox", ["attention.query_key_value", "attention.dense"],
                                              ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]),
                                             ("gpt2", ["attn.c_attn", "attn.c_proj"], ["mlp.c_fc", "mlp.c_proj"])])
def test_attn_mlp_shorthands_resolve_on_any_naming(arch, attn, mlp):
    m = tiny_model(arch)
    block = lambda names: sorted(n.split(".", 2)[2] for n in names if n.startswith("layers.0."))  # noqa: E731
    assert block(target_linears(m, Targets(modules=["attn"]))) == sorted(attn)
    assert block(target_linears(m, Targets(modules=["mlp"]))) == sorted(mlp)


@pytest.mark.parametrize("arch, name", [("mixtral", "gptq"), ("gpt_oss", "quant"), ("qwen2_moe", "sparsegpt")])
def test_the_weights_cache_stores_expert_views_like_linears(arch, name):
    """The compressed-weights codec (codes for quantizers, full copies otherwise) round-trips expert views bit for
    bit into a fresh dense model."""
    from lcc.cache.compressed import CODECS

    m = tiny_model(arch)
    comp = build({"name": name})
    comp.compress(m, CALIB if comp.needs_calibration() else None)
    codec = CODECS[comp.storage()]
    entry, info = codec.encode(comp.touched_linears(m), comp.quant_grids())
    if name in ("gptq", "quant"):
        assert info["summary"]["full_copies"] == 0 and info["summary"]["coded"] == len(comp.touched_linears(m))
    fresh = tiny_model(arch)
    lins = comp.touched_linears(fresh)
    codec.apply(lins, codec.load(lins, entry, info))
    after = m.state_dict()
    assert all(torch.equal(v.view(torch.uint8), after[k].view(torch.uint8)) for k, v in fresh.state_dict().items())


def test_a_weight_compressor_that_leaves_experts_dense_fails_naming_them():
    """The MoE case can never again report ok: a compressor that skips targeted matrices fails the job."""
    from lcc.compressors.quantize import fake_quant_linears
    from lcc.context import compress_model

    m = tiny_model("mixtral")
    comp = build({"name": "quant"})

    def linears_only(model, calib=None):  # the old behaviour: nn.Linear only
        lins = target_linears(model, comp.targets)
        fake_quant_linears({n: v for n, v in lins.items() if isinstance(v, torch.nn.Linear)}, 4, 128)
        return {}
    comp.compress = linears_only
    with pytest.raises(ConfigError, match=r"left 16 of its 24 targeted weight matrices unchanged: "
                                          r"layers\.0\.mlp\.experts\.\*\.gate_up_proj"):
        compress_model(comp, m, None)


def test_the_router_is_a_target_on_request_calibrated_too():
    m = tiny_model("gpt_oss")
    lins = target_linears(m, Targets(modules=["router"]))
    assert sorted(lins) == ["layers.0.mlp.router", "layers.1.mlp.router"]
    before = {n: v.weight.clone() for n, v in lins.items()}
    facts = build({"name": "gptq", "targets": {"modules": ["router"]}}).compress(m, CALIB)
    assert "no_calibration_tokens" not in facts and facts["n_linears"] == 2
    assert all(not torch.equal(v.weight, before[n]) for n, v in lins.items())
