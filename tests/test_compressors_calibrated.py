"""Calibrated compressors (wanda, sparsegpt, gptq, mixed), N:M, quant_wa, compose and their configs."""
import logging

import pytest
import torch

from lcc import ConfigError
from lcc.compressors import build
from lcc.compressors.engine import NormStats
from lcc.compressors.gptq import gptq_quantize
from lcc.compressors.prune import sparsegpt_prune, wanda_prune_
from lcc.compressors.quantize import fake_quant
from lcc.models import tiny_llama


def correlated_inputs(n=2048, d=128, seed=0):
    """Non-isotropic, correlated activations with a few outlier channels (like an LLM's)."""
    g = torch.Generator().manual_seed(seed)
    decay = torch.logspace(0, -2, d)
    A = torch.randn(d, d, generator=g) * decay.unsqueeze(1)
    X = torch.randn(n, d, generator=g) @ A
    X[:, :4] *= 8
    return X


def layer_error(X, W, Wq):
    return ((X @ W.T - X @ Wq.T).norm() / (X @ W.T).norm()).item()


@pytest.fixture(scope="module")
def problem():
    X = correlated_inputs()
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(5))
    H = 2 / X.shape[0] * X.T @ X
    return X, W, H


@pytest.fixture
def calib():
    return torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))


# ---- Wanda -------------------------------------------------------------------------------------------
def test_wanda_mask_equals_brute_force(problem):
    X, W, _ = problem
    stats = NormStats()
    for chunk in X.split(300):
        stats.add_batch("l", chunk.unsqueeze(0))
    Wp = W.clone()
    wanda_prune_(Wp, stats.pop("l"), 0.5)
    col_norm = torch.sqrt((X ** 2).sum(0))
    for r in range(W.shape[0]):
        score = [abs(W[r, j].item()) * col_norm[j].item() for j in range(W.shape[1])]
        pruned = set(sorted(range(W.shape[1]), key=lambda j: score[j])[:64])
        assert {j for j in range(W.shape[1]) if Wp[r, j] == 0} == pruned
    assert torch.equal(Wp[Wp != 0], W[Wp != 0])  # no weight update


def test_wanda_through_the_engine_matches_formula(calib):
    model = tiny_llama(n_layers=2, seed=0).eval()
    lin = model.model.layers[0].self_attn.q_proj
    W = lin.weight.detach().clone()
    got = []
    h = lin.register_forward_hook(lambda m, i, o: got.append(i[0].reshape(-1, i[0].shape[-1])))
    with torch.no_grad():
        model(calib)
    h.remove()
    norms = torch.cat(got).pow(2).sum(0).sqrt()
    score = W.abs() * norms
    expect = torch.zeros_like(W, dtype=torch.bool).scatter_(1, score.argsort(1)[:, :int(0.6 * 64)], True)
    build({"name": "wanda", "sparsity": 0.6}).compress(model, calib)
    assert torch.equal(lin.weight == 0, expect)


# ---- N:M ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_groups_hold_exactly_n(name, n, m, calib):
    model = tiny_llama(n_layers=2, seed=0).eval()
    comp = build({"name": name, "nm_n": n, "nm_m": m})
    facts = comp.compress(model, calib if comp.needs_calibration() else None)
    assert comp.level() == f"{n}:{m}"
    assert facts["sparsity_achieved"] == pytest.approx(1 - n / m, abs=1e-9)
    for lin in (model.model.layers[1].mlp.down_proj, model.model.layers[0].self_attn.k_proj):
        nz = (lin.weight != 0).reshape(lin.out_features, -1, m).sum(-1)
        assert (nz == n).all()


def test_sparsegpt_nm_lower_error_than_magnitude_nm(problem):
    X, W, H = problem
    Ws, _ = sparsegpt_prune(W, H, 0.5, n_keep=2, m=4)
    mag = W.clone()
    idx = W.abs().reshape(64, -1, 4).topk(2, -1, largest=False).indices
    mag = mag.reshape(64, -1, 4).scatter(-1, idx, 0).reshape(64, 128)
    assert ((Ws != 0).reshape(64, -1, 4).sum(-1) == 2).all()
    assert layer_error(X, W, Ws) < 0.8 * layer_error(X, W, mag)


# ---- reconstruction error ----------------------------------------------------------------------------
def test_sparsegpt_beats_magnitude_and_wanda(problem):
    X, W, H = problem
    Ws, retries = sparsegpt_prune(W, H, 0.5)
    assert retries == 0
    assert (Ws == 0).float().mean().item() == pytest.approx(0.5, abs=1e-9)
    mag = W.clone()
    mag.view(-1)[W.abs().flatten().topk(W.numel() // 2, largest=False).indices] = 0
    wan = W.clone()
    wanda_prune_(wan, X.pow(2).sum(0).sqrt(), 0.5)
    e_s, e_m, e_w = layer_error(X, W, Ws), layer_error(X, W, mag), layer_error(X, W, wan)
    print(f"50% sparsity, relative layer-output error: sparsegpt {e_s:.4f} wanda {e_w:.4f} magnitude {e_m:.4f}")
    assert e_s < 0.8 * e_w and e_w < e_m


@pytest.mark.parametrize("bits,gs", [(3, 32), (4, 128), (2, -1)])
def test_gptq_beats_rtn(problem, bits, gs):
    X, W, H = problem
    rtn = fake_quant(W, bits, gs)
    Q, info = gptq_quantize(W, H, bits, gs)
    e_g, e_r = layer_error(X, W, Q), layer_error(X, W, rtn)
    print(f"w{bits}g{gs}: gptq {e_g:.4f} rtn {e_r:.4f}")
    assert e_g < 0.8 * e_r
    # every row of every group sits on a 2^bits grid
    g = 128 if gs <= 0 else gs
    for g0 in range(0, 128, g):
        assert all(len(set(Q[r, g0:g0 + g].tolist())) <= 2 ** bits for r in range(64))


@pytest.mark.parametrize("act_order,static", [(True, False), (False, True), (True, True)])
def test_gptq_act_order_static_groups(problem, act_order, static):
    X, W, H = problem
    Q, _ = gptq_quantize(W, H, 3, 32, act_order=act_order, static_groups=static)
    e_g, e_r = layer_error(X, W, Q), layer_error(X, W, fake_quant(W, 3, 32))
    print(f"w3g32 act_order={act_order} static={static}: gptq {e_g:.4f} rtn {e_r:.4f}")
    assert e_g < 0.8 * e_r
    if static:  # grids fixed from the original weights: at most 2^bits values per natural group
        for g0 in range(0, 128, 32):
            assert all(len(set(Q[r, g0:g0 + 32].tolist())) <= 8 for r in range(64))


def test_gptq_through_engine_beats_rtn_on_model_outputs(calib):
    ids = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(9))
    dense = tiny_llama(n_layers=2, seed=0).eval()
    with torch.no_grad():
        ref = dense(ids).logits
    errs = {}
    for cfg in ({"name": "gptq", "bits": 3, "group_size": 32}, {"name": "quant", "bits": 3, "group_size": 32}):
        m = tiny_llama(n_layers=2, seed=0).eval()
        comp = build(cfg)
        facts = comp.compress(m, calib if comp.needs_calibration() else None)
        with torch.no_grad():
            errs[cfg["name"]] = ((m(calib).logits - dense(calib).logits).norm()).item()
        assert facts["effective_bits"] == pytest.approx(3 + 32 / 32)
    assert errs["gptq"] < errs["quant"]
    assert ref.shape == (1, 64, 256)


def test_cholesky_fallback_is_logged(caplog):
    v = torch.arange(1, 17, dtype=torch.float32)
    H = torch.outer(v, v)  # rank 1: exactly singular
    W = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING):
        Q, info = gptq_quantize(W, H, 4, -1, percdamp=0.0, name="test.layer")
    assert info["cholesky_retries"] >= 1 and info["percdamp"] > 0
    assert any("Cholesky" in r.getMessage() and "test.layer" in r.getMessage() for r in caplog.records)
    assert torch.isfinite(Q).all()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, retries = sparsegpt_prune(W, H, 0.5, percdamp=0.0, name="sp.layer")
    assert retries >= 1 and any("sp.layer" in r.getMessage() for r in caplog.records)


# ---- mixed -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("saliency", ["max_abs", "wanda", "act_norm"])
def test_mixed_extremes_equal_quant(saliency, calib):
    def sd(cfg):
        m = tiny_llama(n_layers=2, seed=0, hidden_size=96).eval()
        comp = build(cfg)
        facts = comp.compress(m, calib if comp.needs_calibration() else None)
        return m.state_dict(), facts
    q4, _ = sd({"name": "quant", "bits": 4, "group_size": 32})
    q8, _ = sd({"name": "quant", "bits": 8, "group_size": 32})
    k0, f0 = sd({"name": "mixed", "keep": 0.0, "group_size": 32, "saliency": saliency})
    k1, f1 = sd({"name": "mixed", "keep": 1.0, "group_size": 32, "saliency": saliency})
    kh, fh = sd({"name": "mixed", "keep": 0.1, "group_size": 32, "saliency": saliency})
    for k in q4:
        assert torch.equal(q4[k], k0[k]) and torch.equal(q8[k], k1[k]), k
    assert f0["high_fraction"] == 0 and f1["high_fraction"] == 1
    assert 4 < f0["effective_bits"] < fh["effective_bits"] < f1["effective_bits"]
    assert fh["high_fraction"] == pytest.approx(0.1, abs=0.01)
    diff = sum(int((q4[k] != kh[k]).sum()) for k in q4)
    assert diff > 0


def test_mixed_keeps_the_largest_groups():
    model = tiny_llama(n_layers=1, seed=0).eval()
    lin = model.model.layers[0].mlp.down_proj  # 64 x 128
    W = lin.weight.detach().clone()
    build({"name": "mixed", "keep": 0.25, "group_size": 32}).compress(model)
    gmax = W.abs().reshape(64, 4, 32).amax(-1)
    top = torch.zeros(256, dtype=torch.bool)
    top[gmax.flatten().topk(64).indices] = True
    expect = torch.where(top.reshape(64, 4, 1).expand(64, 4, 32).reshape(64, 128),
                         fake_quant(W, 8, 32), fake_quant(W, 4, 32))
    assert torch.equal(lin.weight, expect)


def test_mixed_calibration_flag():
    assert build({"name": "mixed"}).needs_calibration() is False
    assert build({"name": "mixed", "saliency": "wanda"}).needs_calibration() is True


# ---- quant_wa ----------------------------------------------------------------------------------------
def test_quant_wa_activation_bits(calib):
    dense = tiny_llama(n_layers=2, seed=0).eval()
    with torch.no_grad():
        ref = dense(calib).logits
    errs = {}
    for a in (8, 4):
        m = tiny_llama(n_layers=2, seed=0).eval()
        comp = build({"name": "quant_wa", "w_bits": 16, "a_bits": a})
        facts = comp.compress(m)
        assert facts["act_quant_hooks"] == 14 and comp.level() == f"w16a{a}"
        with torch.no_grad():
            errs[a] = ((m(calib).logits - ref).norm() / ref.norm()).item()
    print("quant_wa relative logit error", errs)
    assert errs[8] < 0.02 and errs[4] > 4 * errs[8]
    assert build({"name": "quant_wa"}).level() == "w4a8"


# ---- compose -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("second", [{"name": "quant", "bits": 4, "group_size": 32},
                                    {"name": "gptq", "bits": 3, "group_size": 32},
                                    {"name": "mixed", "keep": 0.1, "group_size": 32}])
def test_compose_keeps_sparsity(second, calib):
    m = tiny_llama(n_layers=2, seed=0).eval()
    comp = build({"name": "compose", "stages": [{"name": "sparsegpt", "sparsity": 0.5}, second]})
    assert comp.needs_calibration()
    facts = comp.compress(m, calib)
    assert facts["sparsity_achieved"] >= 0.5
    ref = tiny_llama(n_layers=2, seed=0).eval()
    build({"name": "sparsegpt", "sparsity": 0.5}).compress(ref, calib)
    for (k, a), (_, b) in zip(m.named_parameters(), ref.named_parameters()):
        if k.endswith("proj.weight"):
            assert (a[b == 0] == 0).all(), k
            assert not torch.equal(a, b), k  # the second stage did change the weights
    assert comp.level().startswith("sparsegpt:sparsity=0.5+" + second["name"] + ":")


# ---- configuration errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,needle", [
    ({"name": "wanda", "sparsity": 1.5}, "sparsity=1.5"),
    ({"name": "wanda", "nm_n": 4, "nm_m": 4}, "nm_n=4"),
    ({"name": "magnitude", "nm_n": 2, "nm_m": 0}, "nm_m=0"),
    ({"name": "sparsegpt", "nm_n": 2, "nm_m": 4, "sparsity": 0.3}, "sparsity=0.3"),
    ({"name": "gptq", "bits": 9}, "bits=9"),
    ({"name": "gptq", "group_size": 0}, "group_size=0"),
    ({"name": "gptq", "act_order": "yes"}, "act_order='yes'"),
    ({"name": "gptq", "percdamp": -0.1}, "percdamp=-0.1"),
    ({"name": "mixed", "saliency": "hessian"}, "saliency='hessian'"),
    ({"name": "mixed", "keep": 1.2}, "keep=1.2"),
    ({"name": "mixed", "bits": 8, "high_bits": 4}, "high_bits=4"),
    ({"name": "quant_wa", "a_bits": 1}, "a_bits=1"),
    ({"name": "kv", "key_mode": "row"}, "key_mode='row'"),
    ({"name": "kv", "pre_rope": True, "window": 8}, "window=8"),
    ({"name": "random", "sparsity": -0.5}, "sparsity=-0.5"),
    ({"name": "compose", "stages": []}, "stages=[]"),
    ({"name": "compose", "stages": [{"name": "quant", "bits": 1}]}, "bits=1"),
    ({"name": "compose", "stages": [{"name": "nope"}]}, "'nope'"),
    ({"name": "wanda", "bits": 4}, "['bits']"),
])
def test_invalid_configs(cfg, needle):
    with pytest.raises(ConfigError) as e:
        build(cfg)
    assert needle in str(e.value)


def test_nm_width_must_divide(calib):
    m = tiny_llama(n_layers=1, seed=0, hidden_size=68, n_heads=2, n_kv_heads=2, intermediate_size=136)
    with pytest.raises(ConfigError, match="nm_m=8"):
        build({"name": "magnitude", "nm_n": 4, "nm_m": 8}).compress(m)


def test_random_prune_exact_and_seeded():
    a, b = tiny_llama(n_layers=1, seed=0), tiny_llama(n_layers=1, seed=0)
    fa = build({"name": "random", "sparsity": 0.3, "seed": 1}).compress(a)
    build({"name": "random", "sparsity": 0.3, "seed": 1}).compress(b)
    for lin in a.model.layers[0].modules():
        if isinstance(lin, torch.nn.Linear):
            assert int((lin.weight == 0).sum()) == round(0.3 * lin.weight.numel())
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert fa["sparsity_achieved"] == pytest.approx(0.3, abs=1e-3)
