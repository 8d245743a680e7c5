"""KV-cache fake quantization inside one forward."""
import pytest
import torch

from lcc.compressors import build
from lcc.compressors.kv import KVQuant, KVSpec, windowed_attention
from lcc.models import tiny_llama

IDS = torch.randint(0, 256, (1, 160), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def dense_logits():
    m = tiny_llama(n_layers=2, seed=0).eval()
    with torch.no_grad():
        return m(IDS).logits


def kv_error(cfg, dense_logits, attn="sdpa"):
    m = tiny_llama(n_layers=2, seed=0, attn_implementation=attn).eval()
    comp = build({"name": "kv", **cfg})
    facts = comp.compress(m)
    assert facts["n_attention"] == 2
    with torch.no_grad():
        out = m(IDS).logits
    return ((out - dense_logits).norm() / dense_logits.norm()).item()


def test_kv_bits(dense_logits):
    e8, e4, e2 = (kv_error({"bits": b, "group_size": 32}, dense_logits) for b in (8, 4, 2))
    print(f"kv relative logit error: 8-bit {e8:.5f} 4-bit {e4:.5f} 2-bit {e2:.5f}")
    assert e8 < 0.01 and e8 < e4 < e2 and e2 > 10 * e8


@pytest.mark.parametrize("mode", ["channel", "token"])
def test_kv_sink_and_window_reduce_error(mode, dense_logits):
    base = {"bits": 2, "group_size": 32, "key_mode": mode}
    e = kv_error(base, dense_logits)
    e_sink = kv_error({**base, "sink": 8}, dense_logits)
    e_win = kv_error({**base, "window": 64}, dense_logits)
    e_all = kv_error({**base, "window": 1000}, dense_logits)
    print(f"kv2 {mode}: plain {e:.4f} sink8 {e_sink:.4f} window64 {e_win:.4f}")
    assert e_sink < e and e_win < 0.9 * e
    assert e_all < 1e-5  # a window longer than the sequence leaves every key in full precision


def test_kv_eager_matches_sdpa(dense_logits):
    cfg = {"bits": 3, "group_size": 16, "sink": 2}
    assert kv_error(cfg, dense_logits, "eager") == pytest.approx(kv_error(cfg, dense_logits, "sdpa"), rel=1e-3)
    cfgw = {**cfg, "window": 32}
    assert kv_error(cfgw, dense_logits, "eager") == pytest.approx(kv_error(cfgw, dense_logits, "sdpa"), rel=1e-3)


def test_kv_pre_rope_differs_and_acts(dense_logits):
    post = kv_error({"bits": 3}, dense_logits)
    pre = kv_error({"bits": 3, "pre_rope": True}, dense_logits)
    assert pre > 1e-3 and abs(pre - post) > 1e-5


def test_kv_targets_and_remove(dense_logits):
    m = tiny_llama(n_layers=2, seed=0).eval()
    build({"name": "kv", "bits": 2, "targets": {"layers": [1, 2]}}).compress(m)
    assert getattr(m.model.layers[0].self_attn, "_lcc_kv", None) is None
    assert isinstance(m.model.layers[1].self_attn._lcc_kv, KVSpec)
    with torch.no_grad():
        assert (m(IDS).logits - dense_logits).abs().max() > 1e-3
    KVQuant.remove(m)
    with torch.no_grad():
        torch.testing.assert_close(m(IDS).logits, dense_logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="select no attention"):
        build({"name": "kv", "targets": {"modules": ["mlp"]}}).compress(tiny_llama(n_layers=1))


def test_windowed_attention_is_exact_per_query():
    g = torch.Generator().manual_seed(0)
    b, hq, hk, t, d, w = 1, 4, 2, 40, 8, 7
    q = torch.randn(b, hq, t, d, generator=g)
    kq, kf, vq, vf = (torch.randn(b, hk, t, d, generator=g) for _ in range(4))
    out, _ = windowed_attention(None, q, kq, kf, vq, vf, None, w, scaling=d ** -0.5)
    ref = torch.empty(b, t, hq, d)
    for i in range(t):
        for h in range(hq):
            kv = h // (hq // hk)
            keys = torch.stack([kf[0, kv, j] if j > i - w else kq[0, kv, j] for j in range(i + 1)])
            vals = torch.stack([vf[0, kv, j] if j > i - w else vq[0, kv, j] for j in range(i + 1)])
            p = torch.softmax(keys @ q[0, h, i] * d ** -0.5, 0)
            ref[0, i, h] = p @ vals
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_kv_spec_grids():
    k = torch.randn(1, 2, 50, 16, generator=torch.Generator().manual_seed(1))
    spec = KVSpec(bits=2, group_size=16, key_mode="channel", sym=False, pre_rope=False, sink=5, window=0)
    qk = spec.quant_keys(k)
    assert torch.equal(qk[:, :, :5], k[:, :, :5])  # sinks untouched
    # channel-wise: per channel and group of 16 tokens (after the sinks) at most 4 levels
    for t0 in range(5, 50, 16):
        vals = qk[0, 0, t0:t0 + 16, 3]
        assert len(set(vals.tolist())) <= 4
    qv = spec.quant_values(k)
    assert all(len(set(qv[0, 1, t].tolist())) <= 4 for t in range(5, 50))
    assert build({"name": "kv", "bits": 2, "sink": 4, "window": 128}).level() == "kv2-sink4-win128"
