"""none / magnitude / quant on real tensors, and config-time validation of levels."""
import pytest
import torch

from lcc import ConfigError
from lcc.compressors import build, validate
from lcc.compressors.base import target_linears, Targets
from lcc.compressors.quantize import fake_quant, effective_bits


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.73])
def test_magnitude_reaches_requested_sparsity_exactly(tiny_model, sparsity):
    lins = target_linears(tiny_model, Targets())
    before = {n: l.weight.detach().clone() for n, l in lins.items()}
    info = build({"name": "magnitude", "sparsity": sparsity}).compress(tiny_model)
    for n, lin in lins.items():
        w = lin.weight
        k = round(sparsity * w.numel())
        assert int((w == 0).sum()) == k, n
        # the zeros are the smallest-magnitude weights: every kept |w| >= every pruned |w|
        pruned = before[n].abs()[w == 0]
        kept = before[n].abs()[w != 0]
        assert pruned.max() <= kept.min()
        assert torch.equal(w[w != 0], before[n][w != 0])
    assert info["sparsity_achieved"] == pytest.approx(sparsity, abs=1e-3)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("width,group", [(576, 128), (256, 64), (100, -1)])
def test_quant_at_most_2_pow_bits_values_per_group(bits, width, group):
    w = torch.randn(16, width)
    q = fake_quant(w, bits, group)
    g = width if group <= 0 else group
    for row in q:
        for s in range(0, width, g):  # the last group is shorter when g does not divide width
            assert len(torch.unique(row[s:s + g])) <= 2 ** bits
    assert q.shape == w.shape and q.dtype == w.dtype


def test_quant_error_falls_with_bits():
    w = torch.randn(64, 576)
    errs = [(fake_quant(w, b, 128) - w).pow(2).mean().item() for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-4 < errs[0]


def test_quant_tail_group_has_its_own_scale():
    w = torch.randn(1, 576)
    w[:, 512:] *= 100  # a tail group of 64 with a much larger range must not spoil the head groups
    q = fake_quant(w, 4, 128)
    head_err = (q[:, :512] - w[:, :512]).abs().max()
    assert head_err < 0.5


def test_effective_bits_counts_the_tail_group():
    assert effective_bits(4, 576, 128) == pytest.approx(4 + 32 * 5 / 576)
    assert effective_bits(4, 4096, 128) == pytest.approx(4.25)


def test_quant_compresses_targeted_linears_only(tiny_model):
    emb = tiny_model.get_input_embeddings().weight.clone()
    head = tiny_model.lm_head.weight.clone()
    l0 = target_linears(tiny_model, Targets())["layers.0.self_attn.q_proj"].weight.clone()
    l1 = target_linears(tiny_model, Targets())["layers.1.self_attn.q_proj"].weight.clone()
    build({"name": "quant", "bits": 3, "targets": {"layers": [1, 2]}}).compress(tiny_model)
    lins = target_linears(tiny_model, Targets())
    assert torch.equal(lins["layers.0.self_attn.q_proj"].weight, l0)
    assert not torch.equal(lins["layers.1.self_attn.q_proj"].weight, l1)
    assert torch.equal(tiny_model.get_input_embeddings().weight, emb)
    assert torch.equal(tiny_model.lm_head.weight, head)


def test_targets_module_shorthands(tiny_model):
    attn = target_linears(tiny_model, Targets(modules="attn"))
    mlp = target_linears(tiny_model, Targets(modules=["mlp"]))
    assert attn and mlp and not set(attn) & set(mlp)
    assert all("attn" in n for n in attn) and all("mlp" in n for n in mlp)
    assert set(target_linears(tiny_model, Targets(modules=["mlp.down_proj"]))) == {
        "layers.0.mlp.down_proj", "layers.1.mlp.down_proj"}


def test_none_leaves_model_unchanged(tiny_model):
    sd = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    build({"name": "none"}).compress(tiny_model)
    assert all(torch.equal(sd[k], v) for k, v in tiny_model.state_dict().items())


@pytest.mark.parametrize("cfg,needle", [
    ({"name": "quant", "bits": 0}, "bits=0"),
    ({"name": "quant", "bits": 9}, "bits=9"),
    ({"name": "quant", "group_size": -5}, "group_size=-5"),
    ({"name": "quant", "group_size": 0}, "group_size=0"),
    ({"name": "magnitude", "sparsity": 1.2}, "sparsity=1.2"),
    ({"name": "magnitude", "sparsity": -0.1}, "sparsity=-0.1"),
    ({"name": "quant", "sparsity": 0.5}, "does not take ['sparsity']"),
    ({"name": "magnitude", "bits": 4}, "does not take ['bits']"),
    ({"name": "nope"}, "unknown compressor 'nope'"),
])
def test_invalid_levels_raise_clear_errors(cfg, needle):
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert needle in str(e.value)
    assert "valid" in str(e.value) or "parameters are" in str(e.value)
