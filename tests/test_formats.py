"""FP8 / MX / NVFP4 formats (issue 19): the grids equal compressed-tensors' (its quantize functions, called live on
random tensors with an LLM's outlier structure, and, slow, on SmolLM2's weights by scripts/compare_formats.py),
their properties (representable values, scale rules, saturation), the compressors' contract details and their
composition with the KV path."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lcc import ConfigError
from lcc.compressors import build
from lcc.compressors import formats as F
from lcc.compressors.kv import KVSpec
from lcc.models import tiny_llama

ROOT = Path(__file__).resolve().parent.parent
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def R():
    """compressed-tensors' quantize functions (scripts/ct_reference.py; lcc's extras `checkpoints` / `reference`)."""
    pytest.importorskip("compressed_tensors")
    sys.path.insert(0, str(ROOT / "scripts"))
    import ct_reference
    return ct_reference


def llm_weight(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    """A Linear weight shaped like an LLM's: heavy-tailed values (Student t, 4 degrees of freedom), input columns of
    log-normal scale, a few salient columns 10x larger, isolated outliers, an all-zero row (zero blocks) and a row
    starting with near-zero values (NVFP4 blocks whose E4M3 scale underflows to 0)."""
    t = torch.randn(rows, cols, generator=g) / torch.sqrt(torch.rand(rows, cols, generator=g).clamp_min(1e-3))
    w = 0.02 * t * torch.exp(0.5 * torch.randn(cols, generator=g))
    w[:, torch.randperm(cols, generator=g)[:4]] *= 10
    w[torch.randint(rows, (3,), generator=g), torch.randint(cols, (3,), generator=g)] = torch.tensor([3.0, -11.0, 0.7])
    w[7] = 0.0
    w[9, :64] *= 1e-6
    return w


def llm_activation(tokens: int, features: int, g: torch.Generator) -> torch.Tensor:
    """Linear inputs [tokens, features] shaped like an LLM's: channels of log-normal scale, two massive channels
    (hundreds), a first (sink) token of large norm, an all-zero token, a token with near-zero blocks."""
    x = torch.randn(tokens, features, generator=g) * torch.exp(torch.randn(features, generator=g))
    x[:, torch.randperm(features, generator=g)[:2]] *= 300
    x[0] *= 50
    x[3] = 0.0
    x[5, :64] *= 1e-7
    return x


def llm_keys(g: torch.Generator) -> torch.Tensor:
    """KV states [batch 2, kv heads 3, seq 40, head_dim 64]: a few outlier channels per head (keys' massive channels
    around RoPE's low frequencies), heads of different scales."""
    k = torch.randn(2, 3, 40, 64, generator=g) * torch.tensor([0.5, 2.0, 8.0]).view(1, 3, 1, 1)
    k[..., torch.randperm(64, generator=g)[:3]] *= 20
    return k


WEIGHT_FORMATS = {  # compressed-tensors preset (or 'tensor': FP8 per tensor) -> lcc on one weight, the fused amax
    "tensor": lambda w, amax: F.fp8_tensor(w),
    "FP8_DYNAMIC": lambda w, amax: F.fp8_rows(w),
    "FP8_BLOCK": lambda w, amax: F.fp8_blocks(w, 128),
    "MXFP4A16": lambda w, amax: F.mx(w, "e2m1"),
    "MXFP8A16": lambda w, amax: F.mx(w, "e4m3"),
    "NVFP4A16": lambda w, amax: F.nvfp4(w, global_amax=amax),
}
ACT_FORMATS = {  # compressed-tensors preset -> the lcc compressor whose input hook runs
    "FP8_DYNAMIC": {"name": "fp8"},
    "FP8_BLOCK": {"name": "fp8", "weights": "block", "acts": "group"},
    "MXFP4": {"name": "mxfp4", "acts": True},
    "MXFP8": {"name": "mxfp8", "acts": True},
    "NVFP4": {"name": "nvfp4", "acts": True},
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", sorted(WEIGHT_FORMATS))
def test_weights_equal_compressed_tensors(R, preset, dtype):
    """q/k/v-shaped weights (SmolLM2's widths: 576 in, 576 / 192 / 192 out; 128x128 blocks with edge tiles);
    NVFP4 with the global scale of the fused q/k/v (k holds the largest value), as llm-compressor."""
    g = torch.Generator().manual_seed(1)
    qkv = [llm_weight(576, 576, g), llm_weight(192, 576, g) * 3, llm_weight(192, 576, g)]
    qkv = [w.to(dtype) for w in qkv]
    fused = torch.stack([w.abs().amax() for w in qkv]).amax() if preset.startswith("NVFP4") else None
    if preset == "tensor":
        from compressed_tensors.quantization import QuantizationArgs
        args = QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True)
    else:
        args = R.scheme(preset)[0]
    for w in qkv:
        ours, ref = WEIGHT_FORMATS[preset](w, fused), R.weight(w, args, fused_absmax=fused)
        assert torch.equal(ours, ref), (ours.float() - ref.float()).abs().max()
        assert not torch.equal(ours, w)  # it quantized something


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", sorted(ACT_FORMATS))
def test_activations_equal_compressed_tensors(R, preset, dtype):
    x = llm_activation(24, 512, torch.Generator().manual_seed(2)).to(dtype)
    ours, ref = build(ACT_FORMATS[preset]).quantize_input(x), R.activation(x, R.scheme(preset)[1])
    assert torch.equal(ours, ref), (ours.float() - ref.float()).abs().max()
    assert not torch.equal(ours, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", ["tensor", "head"])
def test_fp8_kv_equals_compressed_tensors(R, scale, dtype):
    k = llm_keys(torch.Generator().manual_seed(3)).to(dtype)
    spec, ref = KVSpec(4, 128, "channel", False, False, 0, 0, "fp8", scale), R.kv(k, scale == "head")
    assert torch.equal(spec.quant_keys(k), ref) and torch.equal(spec.quant_values(k), ref)
    assert not torch.equal(ref, k)


@pytest.mark.slow
def test_equal_compressed_tensors_on_smollm2(R, capsys):
    """scripts/compare_formats.py in fp32: every SmolLM2 Linear through the compressors' compress(), the activations
    and KV states of three layers; it exits 1 where a value differs."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import compare_formats
    assert compare_formats.main(["--no-bf16"]) == 0, capsys.readouterr().out


# ---- grid properties ---------------------------------------------------------------------------
def nearest_even(x: torch.Tensor, grid: torch.Tensor, code_of) -> torch.Tensor:
    """Brute-force round to nearest of ``grid`` (non-negative values), ties to the even code."""
    full = torch.cat([-grid.flip(0), grid])
    d = (x[:, None] - full[None]).abs()
    best = d.min(1, keepdim=True).values
    cands = [[full[j].item() for j in range(len(full)) if d[i, j] == best[i, 0]] for i in range(len(x))]
    return torch.tensor([c[0] if len(c) == 1 else next(v for v in c if code_of(abs(v)) % 2 == 0) for c in cands])


def test_e2m1_rounds_to_nearest_ties_to_even():
    grid = F.grid_values("e2m1")
    assert grid.tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    x = torch.arange(-6.0, 6.0001, 0.125)
    ref = nearest_even(x, grid, code_of=lambda v: grid.tolist().index(v))
    assert torch.equal(F.round_e2m1(x), ref)
    assert F.round_e2m1(torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])).tolist() == [0, 1, 1, 2, 2, 4, 4]


def test_e4m3_grid_and_saturation():
    grid = F.grid_values("e4m3")
    assert grid.max() == 448 and grid[1] == 2.0 ** -9 and len(grid) == 127  # 0, 7 subnormals, 119 normals
    x = torch.linspace(-448, 448, 20001)
    assert torch.isin(F.round_e4m3(x).abs(), grid).all()
    # saturation, never NaN: values beyond the range clamp to +-448 (and +-6 for E2M1)
    big = torch.tensor([1e4, -1e4, 449.0, 460.0])
    assert F.qdq(big, torch.ones(()), "e4m3").tolist() == [448, -448, 448, 448]
    assert F.qdq(torch.tensor([7.0, -100.0]), torch.ones(()), "e2m1").tolist() == [6, -6]


def test_fp8_scales_keep_the_row_max_and_zero_rows():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    w[3] = 0
    q = F.fp8_rows(w)
    torch.testing.assert_close(q.abs().amax(1), w.abs().amax(1), rtol=1e-6, atol=0)  # amax -> exactly 448 * scale
    assert (q[3] == 0).all() and torch.isfinite(q).all()
    # every row is on its own grid: q / (amax / 448) is an E4M3 value
    codes = q / (w.abs().amax(1, keepdim=True) / 448).clamp_min(torch.finfo(torch.float32).eps)
    assert torch.isin(F.round_e4m3(codes).abs(), F.grid_values("e4m3")).all()
    torch.testing.assert_close(codes, F.round_e4m3(codes), rtol=1e-6, atol=1e-6)
    # blocks: each 128x128 tile (edge tiles smaller) has its own scale
    wb = torch.randn(300, 200, generator=torch.Generator().manual_seed(1))
    wb[:128, :128] *= 100
    qb = F.fp8_blocks(wb, 128)
    assert torch.equal(qb[128:, 128:], F.fp8_blocks(wb[128:, 128:], 128))  # tiles aligned at 128: the same tiles
    assert torch.equal(qb[256:, 128:], F.fp8_tensor(wb[256:, 128:]))  # the 44 x 72 edge tile: its own scale
    assert torch.equal(qb[:128, :128], F.fp8_tensor(wb[:128, :128]))


@pytest.mark.parametrize("element", ["e2m1", "e4m3"])
def test_mx_scales_are_powers_of_two_and_values_on_the_grid(element):
    x = torch.randn(16, 96, generator=torch.Generator().manual_seed(2)) * torch.logspace(-4, 3, 16)[:, None]
    q = F.mx(x, element)
    blocks = x.unflatten(-1, (-1, 32))
    s = F.mx_scale(F.absmax(blocks, -1), element)
    assert torch.equal(torch.log2(s), torch.log2(s).round())  # E8M0: powers of two
    vals = (q.unflatten(-1, (-1, 32)) / s).abs()
    assert torch.isin(vals, F.grid_values(element)).all()
    # amax / s lies in [0.875, 1.75) * 2^offset: E2M1 saturates block maxima in (6, 7) to 6, E4M3 never clips
    offset = F.ELEMENTS[element][1]
    ratio = F.absmax(blocks, -1) / s
    assert (ratio < 1.75 * 2 ** offset).all() and (ratio >= 0.875 * 2 ** offset).all()
    assert (vals <= F.ELEMENTS[element][0]).all()
    # compressed-tensors' rounding: the exponent goes up at a mantissa of 1.75 (OCP's floor(log2) would not)
    a = torch.tensor([1.74, 1.75, 2.0])
    assert F.mx_scale(a, "e2m1").tolist() == [0.25, 0.5, 0.5]


def test_nvfp4_scales_are_e4m3_and_global_scale_fills_the_range():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    x[0, 0] = 9.0
    amax = F.absmax(x, (0, 1))
    g = F.nv_global_scale(amax)
    torch.testing.assert_close(g.reshape(-1), torch.tensor([448 * 6 / 9.0]))
    blocks = x.unflatten(-1, (-1, 16))
    eff = F.nv_block_scale(F.absmax(blocks, -1), g)
    s = eff * g  # the stored E4M3 block scale
    torch.testing.assert_close(s, F.round_e4m3(s), rtol=1e-6, atol=0)
    assert s.max() == 448  # the block holding the tensor max gets the largest E4M3 scale
    vals = (F.nvfp4(x).unflatten(-1, (-1, 16)) / eff).abs()
    torch.testing.assert_close(vals, F.round_e2m1(vals), rtol=1e-5, atol=1e-5)
    assert torch.equal(F.nvfp4(torch.zeros(4, 32)), torch.zeros(4, 32))


def test_widths_not_a_multiple_get_a_shorter_last_block():
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(4))
    for fn, b in [(lambda t: F.mx(t, "e2m1"), 32), (F.nvfp4, 16)]:
        q = fn(x)
        assert q.shape == x.shape
        if fn is F.nvfp4:
            continue  # global scale from the whole tensor: the tail is not independent
        torch.testing.assert_close(q[:, 32:], fn(x[:, 32:]))


# ---- compressors ------------------------------------------------------------------------------
def test_levels_name_the_format():
    assert build({"name": "fp8"}).level() == "FP8_DYNAMIC"
    assert build({"name": "fp8", "weights": "block", "acts": "group"}).level() == "FP8_BLOCK"
    assert build({"name": "fp8", "weights": "tensor", "acts": "none"}).level() == "FP8-Wtensor-A16"
    assert build({"name": "fp8", "weights": "none"}).level() == "FP8-W16-Atoken"
    assert build({"name": "nvfp4"}).level() == "NVFP4A16" and build({"name": "nvfp4", "acts": True}).level() == "NVFP4"
    assert build({"name": "mxfp4", "acts": True}).level() == "MXFP4" and build({"name": "mxfp8"}).level() == "MXFP8A16"
    assert build({"name": "kv", "format": "fp8"}).level() == "kv-fp8"
    assert build({"name": "kv", "format": "fp8", "fp8_scale": "head"}).level() == "kv-fp8-head"
    assert build({"name": "kv"}).level() == "kv4"  # the integer KV label is unchanged


@pytest.mark.parametrize("cfg,needle", [
    ({"name": "fp8", "weights": "none", "acts": "none"}, "nothing is quantized"),
    ({"name": "fp8", "weights": "int8"}, "weights='int8' is invalid; valid: one of ['tensor', 'channel', 'block'"),
    ({"name": "nvfp4", "acts": "yes"}, "acts='yes' is invalid; valid: true or false"),
    ({"name": "kv", "format": "fp8", "bits": 8}, "bits=8 does not apply to format='fp8'"),
    ({"name": "kv", "format": "fp4"}, "format='fp4' is invalid; valid: one of ['int', 'fp8']"),
    ({"name": "kv", "fp8_scale": "head"}, "fp8_scale='head' applies to format='fp8' only"),
])
def test_bad_values_are_refused(cfg, needle):
    with pytest.raises(ConfigError) as e:
        build(cfg)
    assert needle in str(e.value)


def test_nvfp4_fuses_the_global_scale_of_qkv_and_gate_up():
    m = tiny_llama(n_layers=1, seed=0).eval()
    attn = m.model.layers[0].self_attn
    with torch.no_grad():
        attn.k_proj.weight[0, 0] = 5.0  # k's outlier sets q/k/v's shared global scale
    w = {n: getattr(attn, n).weight.detach().clone() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    build({"name": "nvfp4"}).compress(m)
    for n in ("q_proj", "v_proj"):
        assert torch.equal(getattr(attn, n).weight, F.nvfp4(w[n], global_amax=torch.tensor(5.0)))
        assert not torch.equal(getattr(attn, n).weight, F.nvfp4(w[n]))
    assert torch.equal(attn.o_proj.weight, F.nvfp4(w["o_proj"]))  # not fused: its own
    m2 = tiny_llama(n_layers=1, seed=0).eval()
    with torch.no_grad():
        m2.model.layers[0].self_attn.k_proj.weight[0, 0] = 5.0
    build({"name": "nvfp4", "fuse_global": False}).compress(m2)
    assert torch.equal(m2.model.layers[0].self_attn.q_proj.weight, F.nvfp4(w["q_proj"]))


@pytest.mark.parametrize("cfg", [{"name": "fp8"}, {"name": "nvfp4", "acts": True}, {"name": "mxfp4", "acts": True}])
def test_activation_hooks_quantize_the_linear_input(cfg):
    m = tiny_llama(n_layers=1, seed=0).eval()
    comp = build(cfg)
    facts = comp.compress(m)
    lin = m.model.layers[0].mlp.down_proj
    x = torch.randn(1, 5, lin.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = lin(x)
    torch.testing.assert_close(out, torch.nn.functional.linear(comp.quantize_input(x), lin.weight))
    assert not torch.allclose(out, torch.nn.functional.linear(x, lin.weight))
    assert facts["act_quant_hooks"] == facts["n_linears"] == 7 and facts["format"] == comp.level()


def test_effective_bits():
    m = tiny_llama(n_layers=1, seed=0).eval()  # hidden 64
    assert build({"name": "nvfp4"}).compress(m)["effective_bits"] == 4.5
    assert build({"name": "mxfp4"}).compress(tiny_llama(n_layers=1))["effective_bits"] == 4.25
    assert build({"name": "mxfp8"}).compress(tiny_llama(n_layers=1))["effective_bits"] == 8.25
    assert 8 < build({"name": "fp8", "weights": "tensor", "acts": "none"}).compress(
        tiny_llama(n_layers=1))["effective_bits"] < 8.01  # one fp32 scale per tensor


IDS = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(5))


def logits_after(cfg):
    m = tiny_llama(n_layers=2, seed=0).eval()
    build(cfg).compress(m)
    with torch.no_grad():
        return m(IDS).logits


def test_fp8_kv_in_the_attention_and_composed_with_weight_formats():
    dense = logits_after({"name": "none"})
    err = {name: ((logits_after(cfg) - dense).norm() / dense.norm()).item() for name, cfg in {
        "kv-fp8": {"name": "kv", "format": "fp8"},
        "kv-fp8-head": {"name": "kv", "format": "fp8", "fp8_scale": "head"},
        "kv-fp8-unit": {"name": "kv", "format": "fp8", "fp8_scale": "unit"},
        "kv4": {"name": "kv"},
        "nvfp4": {"name": "nvfp4"},
        "nvfp4+kv-fp8": {"name": "compose", "stages": [{"name": "nvfp4"}, {"name": "kv", "format": "fp8"}]},
        "nvfp4-w4a4+kv4": {"name": "compose", "stages": [{"name": "nvfp4", "acts": True}, {"name": "kv"}]},
    }.items()}
    print({k: round(v, 5) for k, v in err.items()})
    assert 0 < err["kv-fp8"] < err["kv4"] and 0 < err["kv-fp8-head"] < err["kv4"]
    assert err["kv-fp8-unit"] > 0
    assert err["nvfp4+kv-fp8"] != err["nvfp4"] and err["nvfp4+kv-fp8"] > 0
    assert err["nvfp4-w4a4+kv4"] > err["nvfp4"]


def test_fp8_kv_sink_keeps_first_positions_exact():
    k = torch.randn(1, 2, 10, 8, generator=torch.Generator().manual_seed(6)) * 3
    spec = KVSpec(4, 128, "channel", False, False, 3, 0, "fp8", "head")
    q = spec.quant_keys(k)
    assert torch.equal(q[..., :3, :], k[..., :3, :]) and not torch.equal(q[..., 3:, :], k[..., 3:, :])
