"""SmoothQuant and AWQ equal the authors' code (transcribed in scripts/reference/, run here on the tiny model
with the same weights and calibration), and their smoothing alone leaves the model's function unchanged.
The SmolLM2 numbers: scripts/compare_awq_smoothquant.py (docs/compressors.md, the issue-19 note)."""
from __future__ import annotations

import pytest
import torch

from lcc import ConfigError
from lcc.compressors import build
from lcc.models import tiny_llama
from scripts import compare_awq_smoothquant as cmp


def tiny():
    return tiny_llama(n_layers=2, n_heads=4, n_kv_heads=4, seed=0).eval()


def calib(n=8, seqlen=128):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("alpha", [0.5, 0.85])
def test_smoothquant_equals_reference(alpha):
    r = cmp.compare_smoothquant(tiny(), calib(), alpha)
    assert r["act_max"] == 0.0 and r["weights_equal"] and r["logits"] == 0.0, r
    assert r["logits_vs_dense"] > 1e-3  # it did quantize


def test_smoothing_alone_is_exact(monkeypatch):
    import lcc.compressors.smoothquant as sq
    m, ids = tiny(), calib(1, 64)
    with torch.no_grad():
        ref = m(ids).logits
        monkeypatch.setattr(sq, "absmax_fake_quant", lambda x, bits: x)
        build({"name": "smoothquant", "a_bits": 16}).compress(m, calib())
        assert (m(ids).logits - ref).abs().max() < 1e-4 * ref.abs().max()


def test_smoothquant_partial_targets_smooth_only_whole_groups():
    m = tiny()
    c = build({"name": "smoothquant", "targets": {"modules": ["self_attn.q_proj", "mlp.*"]}})
    facts = c.compress(m, calib())
    assert facts["smoothed_groups"] == 2  # gate/up of both blocks; q alone is not a whole group
    with pytest.raises(ConfigError, match="alpha=1.5 is invalid"):
        build({"name": "smoothquant", "alpha": 1.5})


@pytest.mark.parametrize("gs", [32, 64])
def test_awq_equals_reference(gs):
    r = cmp.compare_awq(tiny(), calib(), group_size=gs)
    assert r["scales_keys_equal"] and r["n_scale_groups"] == [8, 8] and r["n_clips"] == [10, 10], r
    assert r["scales"] == 0.0 and r["clips"] == 0.0 and r["weights_equal"] and r["logits"] == 0.0, r
    assert r["logits_vs_dense"] > 1e-3


def test_awq_short_last_group_and_propagate():
    """A width that is not a multiple of the group (64 with 48: groups of 48 and 16) runs; propagate=true
    calibrates block 1 on block 0's quantized outputs, so block 1 changes and block 0 does not."""
    a, b = tiny(), tiny()
    build({"name": "awq", "group_size": 48}).compress(a, calib())
    build({"name": "awq", "group_size": 48, "propagate": True}).compress(b, calib())
    wa, wb = a.model.layers, b.model.layers
    assert torch.equal(wa[0].mlp.down_proj.weight, wb[0].mlp.down_proj.weight)
    assert not torch.equal(wa[1].mlp.down_proj.weight, wb[1].mlp.down_proj.weight)
    w = wa[0].mlp.up_proj.weight  # every group of 48 (and the last of 16) holds at most 16 levels
    assert max(len(torch.unique(w[0, s:s + 48])) for s in (0, 48)) <= 16


@pytest.mark.slow
def test_smoothquant_equals_reference_on_smollm2():
    """The embedded model, 8 x 128 tokens of CPython's docs (the script's default; ~10 s)."""
    m, c = cmp.load("smollm2", 8, 128)
    r = cmp.compare_smoothquant(m, c, 0.5)
    assert r["act_max"] == 0.0 and r["weights_equal"] and r["logits"] == 0.0, r
