"""The compressed-weights cache stores quantized weights as packed integer codes + scales and zero points
(lcc/cache/codes.py, CodesCodec): decoded bit for bit, verified when written, a bad entry never used."""
from __future__ import annotations

import json

import pytest
import torch

from lcc.cache import CODECS, TensorStore, codes
from lcc.compressors import QuantGrid, Storage, build
from lcc.compressors.gptq import gptq_quantize
from lcc.compressors.quantize import fake_quant_grid
from lcc.models import tiny_llama
from tests.test_cache import compose_cfg

CALIB = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(codes._int_view(a), codes._int_view(b))


def round_trip(cfg: dict, dtype=torch.float32, calib=None) -> dict:
    """Compress the tiny model with ``cfg``, encode, decode into a fresh dense model: bit for bit equal.
    Returns the codec's description of the entry."""
    comp = build(cfg)
    model = tiny_llama(n_layers=2, seed=0, dtype=dtype).eval()
    comp.compress(model, calib if comp.needs_calibration() else None)
    codec = CODECS[comp.storage()]
    entry, info = codec.encode(comp.touched_linears(model), comp.quant_grids())
    fresh = tiny_llama(n_layers=2, seed=0, dtype=dtype).eval()
    lins = comp.touched_linears(fresh)
    codec.apply(lins, codec.load(lins, entry, info))
    after, got = model.state_dict(), fresh.state_dict()
    assert all(bits_equal(got[k], after[k]) for k in after)
    return {"entry": entry, "info": info, "model": model}


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 4097])
def test_pack_codes_round_trips_at_every_width(bits, n):
    c = torch.randint(0, 2 ** bits, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    packed = codes.pack_codes(c, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == codes.packed_size(n, bits)
    assert torch.equal(codes.unpack_codes(packed, n, bits), c)
    if bits == 4 and n >= 2:  # two codes a byte, the first in the high nibble
        assert packed[0] == c[0] * 16 + c[1]
    assert packed.numel() <= -(-n // 8) * bits  # <= bits/8 bytes a code, up to 7 padding codes


@pytest.mark.parametrize("dtype,bits", [(torch.float32, 2), (torch.float32, 3), (torch.float32, 4), (torch.float32, 8),
                                        (torch.bfloat16, 4), (torch.bfloat16, 8), (torch.float16, 3),
                                        (torch.float16, 8)])
@pytest.mark.parametrize("group_size", [-1, 48, 128])  # tiny widths 64 and 128: 48 leaves a shorter last group
@pytest.mark.parametrize("sym", [False, True])
def test_quant_round_trips_bit_for_bit(dtype, bits, group_size, sym):
    r = round_trip({"name": "quant", "bits": bits, "group_size": group_size, "sym": sym}, dtype)
    assert r["info"]["summary"]["full_copies"] == 0 and r["info"]["summary"]["coded"] == 14
    desc = r["info"]["linears"]["layers.0.mlp.down_proj"]  # width 128
    assert desc["bits"] == bits and desc["n_groups"] == {-1: 1, 48: 3, 128: 1}[group_size]
    assert r["entry"]["layers.0.mlp.down_proj.weight.zero"].dtype == torch.uint8  # integer zero points
    assert r["entry"]["layers.0.mlp.down_proj.weight.codes"].numel() == 64 * 128 * bits // 8


@pytest.mark.parametrize("act_order,static_groups", [(False, False), (True, False), (True, True), (False, True)])
@pytest.mark.parametrize("group_size,sym", [(128, False), (48, False), (-1, False), (48, True)])
def test_gptq_grid_round_trips_bit_for_bit(act_order, static_groups, group_size, sym):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(32, 200, generator=g)
    X = torch.randn(400, 200, generator=g) * torch.linspace(0.1, 3, 200)  # distinct diag(H): a real permutation
    H = 2 / 400 * X.T @ X
    H[5, :] = H[:, 5] = 0  # a dead input
    Q, info = gptq_quantize(W, H, 4, group_size, sym, act_order, static_groups)
    grid = info["grid"]
    assert (grid.g_idx is not None) == (act_order and not static_groups and group_size > 0)
    for dtype in (torch.float32, torch.bfloat16):
        q = Q.to(dtype)
        enc = codes.encode(q, grid)
        assert enc is not None
        assert bits_equal(codes.decode(*enc, q.shape, dtype, "cpu"), q)
    if grid.g_idx is not None:  # groups are made in walk order: g_idx is not column // group
        assert not torch.equal(grid.g_idx, torch.arange(200) // group_size)


@pytest.mark.parametrize("cfg", [
    {"name": "gptq", "act_order": True}, {"name": "gptq", "act_order": True, "static_groups": True},
    {"name": "gptq", "bits": 3, "group_size": 48, "sym": True},
    {"name": "mixed", "keep": 0.3}, {"name": "mixed", "keep": 0.3, "saliency": "wanda", "high_bits": 6},
    {"name": "quant_wa", "a_bits": 16, "w_bits": 3, "group_size": 48},
])
def test_calibrated_and_mixed_compressors_round_trip(cfg):
    r = round_trip(cfg, calib=CALIB)
    assert r["info"]["summary"] == {**r["info"]["summary"], "coded": 14, "full_copies": 0}
    if cfg["name"] == "mixed":  # two code streams: low groups at bits, high groups at high_bits
        desc = r["info"]["linears"]["layers.1.mlp.up_proj"]
        assert desc["high_bits"] == cfg.get("high_bits", 8) and 0 < desc["n_high"] < 64 * 128


@pytest.mark.parametrize("stages", [
    [{"name": "magnitude", "sparsity": 0.5}, {"name": "quant", "bits": 4, "group_size": 48}],
    [{"name": "sparsegpt", "sparsity": 0.5}, {"name": "gptq", "bits": 4}],
    [{"name": "quant", "bits": 4}, {"name": "magnitude", "sparsity": 0.3}],  # pruning after: zeros are codes
])
def test_pruning_and_quantization_compose(stages):
    r = round_trip({"name": "compose", "stages": stages}, calib=CALIB)
    assert r["info"]["summary"]["coded"] == 14 and r["info"]["summary"]["full_copies"] == 0
    lins = build({"name": "compose", "stages": stages}).touched_linears(r["model"])
    for n, lin in lins.items():
        desc, t = r["info"]["linears"][n], {k[len(n) + 8:]: v for k, v in r["entry"].items()
                                              if k.startswith(f"{n}.weight.")}
        c = codes.unpack_codes(t["codes"], lin.weight.numel(), desc["bits"]).view(lin.weight.shape)
        gi = QuantGrid(desc["bits"], desc["group_size"], t["scale"], t["zero"]).column_groups(lin.weight.shape[1])
        pruned = lin.weight == 0
        assert pruned.float().mean() >= 0.29
        # a pruned weight is the code of the zero point and decodes to +0.0 exactly
        assert torch.equal(c[pruned], t["zero"][:, gi][pruned].to(torch.uint8))
        assert (codes._int_view(lin.weight.data)[pruned] == 0).all()


def test_sparsegpt_alone_is_a_full_copy():
    r = round_trip({"name": "sparsegpt"}, calib=CALIB)
    assert r["info"]["summary"] == {"coded": 0, "full_copies": 14, "coded_bits_per_weight": None}


def test_a_weight_off_its_grid_is_stored_as_a_full_copy(caplog):
    """A stale or wrong grid (weights changed after it was recorded) is detected at write time: that Linear is
    stored in full, logged and counted; the others stay coded; the entry still decodes bit for bit."""
    comp = build({"name": "quant", "bits": 4})
    model = tiny_llama(n_layers=2, seed=0).eval()
    comp.compress(model)
    lins = comp.touched_linears(model)
    with torch.no_grad():
        lins["layers.1.self_attn.o_proj"].weight[3, 7] += 1e-3  # off the grid
    grids = dict(comp.quant_grids())
    g = grids["layers.0.mlp.up_proj"]  # a grid whose scales are off by one ulp
    grids["layers.0.mlp.up_proj"] = QuantGrid(g.bits, g.group_size, torch.nextafter(g.scale, g.scale * 2), g.zero)
    entry, info = CODECS[Storage.WEIGHTS].encode(lins, grids)
    assert info["summary"]["full_copies"] == 2 and info["summary"]["coded"] == 12
    assert "layers.1.self_attn.o_proj.weight" in entry and "layers.0.mlp.up_proj.weight" in entry
    assert "do not decode bit for bit" in caplog.text
    fresh = tiny_llama(n_layers=2, seed=0).eval()
    flins = comp.touched_linears(fresh)
    CODECS[Storage.WEIGHTS].apply(flins, CODECS[Storage.WEIGHTS].load(flins, entry, info))
    assert all(bits_equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


def test_mismatched_codes_are_rejected_on_load():
    """Codes that do not decode to the recorded weights (fingerprint), a wrong size, or a missing tensor: load
    raises before the model is touched."""
    comp = build({"name": "quant", "bits": 4})
    model = tiny_llama(n_layers=2, seed=0).eval()
    comp.compress(model)
    codec = CODECS[Storage.WEIGHTS]
    entry, info = codec.encode(comp.touched_linears(model), comp.quant_grids())
    fresh = tiny_llama(n_layers=2, seed=0).eval()
    lins = comp.touched_linears(fresh)
    dense = {k: v.clone() for k, v in fresh.state_dict().items()}
    bad = dict(entry)
    k = "layers.0.mlp.gate_proj.weight.codes"
    bad[k] = bad[k].clone()
    bad[k][10] ^= 0x11  # two codes changed
    with pytest.raises(ValueError, match="layers.0.mlp.gate_proj differ"):
        codec.load(lins, bad, info)
    with pytest.raises(ValueError, match="shape/dtype"):
        codec.load(lins, {**entry, k: entry[k][:-1]}, info)
    with pytest.raises(ValueError, match="names differ"):
        codec.load(lins, {n: v for n, v in entry.items() if n != k}, info)
    assert all(torch.equal(v, dense[n]) for n, v in fresh.state_dict().items())  # untouched


def _entry(tmp_path, key):
    return TensorStore(tmp_path / "cache", "compressed").read(key)


def test_job_gptq_entry_is_codes_and_hit_equals_miss(tmp_path):
    """A job's numbers are identical whether its GPTQ (act-order, dynamic groups: a g_idx) weights were computed,
    decoded from the cache, or the cache is off; the entry holds codes at 4 bits + one fp32 scale and one uint8
    zero point per group of 32 (+ g_idx) and says so."""
    from lcc.job import run

    g = ["compressor=gptq", "compressor.act_order=true", "compressor.group_size=32", "calib.n_samples=2",
         "calib.seqlen=64"]
    r1 = run(compose_cfg(tmp_path, "a", *g))
    r2 = run(compose_cfg(tmp_path, "b", *g, "ctx.tokens=512"))
    r3 = run(compose_cfg(tmp_path, "c", *g, "ctx.tokens=512", "++cache.enabled=false"))
    assert (r1["cache"]["compressed"], r2["cache"]["compressed"], r3["cache"]["compressed"]) == ("miss", "hit", "off")
    assert r2["summary"] == r3["summary"] and r2["compress_info"] == r3["compress_info"]
    tensors, meta = _entry(tmp_path, r1["cache"]["compressed_key"])
    assert meta["inputs"]["encoding"] == "codes" and meta["facts"]["codec"]["summary"]["full_copies"] == 0
    n_weights = sum(lin.weight.numel() for lin in build({"name": "gptq"}).touched_linears(tiny_llama(n_layers=2)).values())
    assert 4 + 40 / 32 < 8 * meta["bytes"] / n_weights <= 4 + 40 / 32 + 0.5  # g_idx: 32 bits per column
    assert any(k.endswith(".g_idx") for k in tensors)


def test_job_rejects_codes_that_pass_the_checksum_but_not_the_fingerprint(tmp_path, caplog):
    """An entry whose code bytes were changed and its checksums rewritten (so only the decode check can tell) is
    deleted and recomputed, and the job's numbers are those of a fresh compression."""
    from safetensors.torch import load_file, save_file

    from lcc.io import file_checksum
    from lcc.job import run

    r1 = run(compose_cfg(tmp_path, "a"))  # quant w4g128, cache.compressed=true
    entry = tmp_path / "cache" / "compressed" / r1["cache"]["compressed_key"]
    meta = json.loads((entry / "meta.json").read_text())
    part = entry / meta["parts"][0]["file"]
    t = load_file(part)
    k = next(k for k in t if k.endswith(".codes"))
    t[k][0] ^= 0x01
    save_file(t, str(part), metadata={"lcc_key": meta["key"], "lcc_kind": "compressed"})
    meta["parts"][0].update(size=part.stat().st_size, xxh3_128=file_checksum(part))
    (entry / "meta.json").write_text(json.dumps(meta))
    r2 = run(compose_cfg(tmp_path, "b"))
    assert r2["cache"]["compressed"] == "miss" and "fingerprint" in caplog.text
    assert r2["summary"] == r1["summary"]
    assert run(compose_cfg(tmp_path, "c"))["cache"]["compressed"] == "hit"


def test_codec_is_in_the_key(tmp_path):
    """Entries of the earlier full-copy codec (encoding ``weights``) are not read: the key names the codec."""
    from lcc.job import run

    r = run(compose_cfg(tmp_path, "a"))
    inputs = _entry(tmp_path, r["cache"]["compressed_key"])[1]["inputs"]
    assert inputs["encoding"] == "codes" and inputs["codec_code"]


@pytest.mark.slow
def test_smollm2_w4g128_entry_is_at_most_5_bits_per_weight(tmp_path):
    """SmolLM2-135M (widths 576 and 1536, groups of 128 with a shorter last group at 576): quant w4g128's entry
    is 4.3 bits per targeted weight (was 32: a full fp32 copy), and w3 3.3."""
    from lcc.job import run

    base = ["model=smollm2_135m", "n_docs=1"]
    for bits, lo, hi in ((4, 4.0, 5.0), (3, 3.0, 4.0)):
        r = run(compose_cfg(tmp_path, f"w{bits}", *base, f"compressor.bits={bits}"))
        meta = _entry(tmp_path, r["cache"]["compressed_key"])[1]
        n = meta["facts"]["compress_info"]["n_linears"]
        assert n == 210 and meta["facts"]["codec"]["summary"] == {**meta["facts"]["codec"]["summary"],
                                                                 "coded": n, "full_copies": 0}
        n_weights = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)  # 30 blocks: q, o, k, v, gate, up, down
        assert lo < 8 * meta["bytes"] / n_weights <= hi, 8 * meta["bytes"] / n_weights


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_grid_recorded_when_each_block_is_traced_twice(monkeypatch, act_order):
    """On CUDA the OBS walk runs a block's Python once for the warm-up and once for the graph capture, then only
    replays: a grid recorded by a Python side effect in ``column`` would be doubled or stale. The rule writes
    each group's grid into its own tensors and copies them out in ``finish``: tracing every block twice (as the
    graph path does for the first block) records exactly the grid of a plain walk."""
    import lcc.compressors.obs as obs
    from lcc.compressors.gptq import gptq_quantize

    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 96, generator=g)
    H = 2 * X.t() @ X / 512
    W = torch.randn(40, 96, generator=g)
    kw = dict(bits=4, group_size=16, act_order=act_order, blocksize=32)
    Q, info = gptq_quantize(W, H, **kw)
    orig = obs._walk_block

    def twice(W1, Hinv1, rule):
        orig(W1.clone(), Hinv1, rule)  # the warm-up / capture trace
        return orig(W1, Hinv1, rule)

    monkeypatch.setattr(obs, "_walk_block", twice)
    Q2, info2 = gptq_quantize(W, H, **kw)
    a, b = info["grid"], info2["grid"]
    assert a.scale.shape == (40, 6) and b.scale.shape == a.scale.shape
    assert torch.equal(a.scale, b.scale) and torch.equal(a.zero, b.zero) and torch.equal(Q, Q2)
    cols = a.column_groups(96)
    codes = torch.round(Q / a.scale[:, cols]) + a.zero[:, cols]
    assert torch.equal((codes - a.zero[:, cols]) * a.scale[:, cols], Q)
