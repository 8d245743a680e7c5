"""lcc's FP8 / MX / NVFP4 grids against compressed-tensors' quantize functions, on SmolLM2-135M's real weights,
activations and KV states (issue 19). Prints the max |lcc - reference| per format; exits 1 where an fp32 value
differs.

    python scripts/compare_formats.py            # every Linear of the model, fp32 (and bf16)
    python scripts/compare_formats.py --no-bf16  # fp32 only (tests/test_formats.py runs this, marked slow)

Needs ``compressed-tensors`` (``pip install 'compressed-tensors>=0.20,<0.21'``; lcc's extras ``reference`` and
``checkpoints``). ``tests/test_formats.py`` also calls the same reference functions (``scripts/ct_reference.py``)
on random tensors with an LLM's outlier structure, made at test time (no recorded model weights).
Weights: every targeted Linear of the model after the lcc compressor's own ``compress()`` against the reference on the
original weight (NVFP4: the global scale over the fused q/k/v and gate/up Linears, as llm-compressor's
``fuse_weight_observers``). Activations: the inputs of the Linears of layers 0, 15 and 29 over 256 tokens of
CPython's docs, through the compressor's own input hook function. KV: the k_proj / v_proj outputs of the same
layers as [1, kv_heads, seq, head_dim], through ``KVSpec`` (format fp8). bf16: the same on bf16 tensors, where the
reference computes in bf16 and lcc in fp32 (informative: rounding of the scale arithmetic, not a grid difference).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ct_reference as R  # noqa: E402

from lcc.compressors import build  # noqa: E402
from lcc.compressors.base import target_linears  # noqa: E402
from lcc.compressors.kv import KVSpec  # noqa: E402

#: format -> (lcc compressor config, compressed-tensors preset)
WEIGHT_FORMATS = {
    "FP8 per tensor": ({"name": "fp8", "weights": "tensor", "acts": "none"}, "tensor"),
    "FP8 per channel (FP8_DYNAMIC)": ({"name": "fp8", "weights": "channel", "acts": "none"}, "FP8_DYNAMIC"),
    "FP8 128x128 block (FP8_BLOCK)": ({"name": "fp8", "weights": "block", "acts": "none"}, "FP8_BLOCK"),
    "MXFP4 (MXFP4A16)": ({"name": "mxfp4"}, "MXFP4A16"),
    "MXFP8 (MXFP8A16)": ({"name": "mxfp8"}, "MXFP8A16"),
    "NVFP4 (NVFP4A16, fused global scales)": ({"name": "nvfp4"}, "NVFP4A16"),
}
ACT_FORMATS = {
    "FP8 per token (FP8_DYNAMIC)": ({"name": "fp8"}, "FP8_DYNAMIC"),
    "FP8 per token group 128 (FP8_BLOCK)": ({"name": "fp8", "weights": "block", "acts": "group"}, "FP8_BLOCK"),
    "MXFP4 (MXFP4)": ({"name": "mxfp4", "acts": True}, "MXFP4"),
    "MXFP8 (MXFP8)": ({"name": "mxfp8", "acts": True}, "MXFP8"),
    "NVFP4 (NVFP4, per-token global scale)": ({"name": "nvfp4", "acts": True}, "NVFP4"),
}
LAYERS = (0, 15, 29)


def weight_args(preset: str):
    if preset == "tensor":
        from compressed_tensors.quantization import QuantizationArgs
        return QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True)
    return R.scheme(preset)[0]


def reference_weights(model, preset: str, names) -> dict[str, torch.Tensor]:
    """The reference's fake-quantized weight of every Linear in ``names`` (global scale fused for NVFP4)."""
    from lcc.compressors.formats import fused_groups

    lins = target_linears(model, build({"name": "none"}).targets)
    args = weight_args(preset)
    out = {}
    groups = fused_groups(names) if preset.startswith("NVFP4") else [[n] for n in names]
    for g in groups:
        amax = torch.stack([lins[n].weight.detach().abs().amax() for n in g]).amax()
        for n in g:
            out[n] = R.weight(lins[n].weight.detach(), args, fused_absmax=amax)
    return out


def load(dtype):
    from lcc.models import _load_gguf_cached, smollm2_gguf
    model, tok = _load_gguf_cached(smollm2_gguf(), dtype)
    return model.eval(), tok


def capture(model, tok, n_tokens: int = 256):
    """Inputs of the Linears and k_proj / v_proj outputs of LAYERS over n_tokens of CPython's docs."""
    from pydoc_data.topics import topics
    text = " ".join(topics[k] for k in sorted(topics))[:20000]
    ids = tok(text, return_tensors="pt")["input_ids"][:, :n_tokens]
    acts, kv, hooks = {}, {}, []
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    for i in LAYERS:
        blk = model.model.layers[i]
        for name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
            mod = blk.get_submodule(name)
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, key=f"layers.{i}.{name}": acts.__setitem__(key, a[0][0].detach().clone())))
        for name in ("k_proj", "v_proj"):
            mod = blk.self_attn.get_submodule(name)
            hooks.append(mod.register_forward_hook(
                lambda m, a, o, key=f"layers.{i}.{name}": kv.__setitem__(
                    key, o.detach().view(1, o.shape[1], -1, d).transpose(1, 2).contiguous())))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return acts, kv


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def compare(dtype, rows: list) -> None:
    tag = str(dtype).replace("torch.", "")
    model, tok = load(dtype)
    names = list(target_linears(model, build({"name": "none"}).targets))
    dense = {n: lin.weight.detach().clone() for n, lin in target_linears(model, build({"name": "none"}).targets).items()}
    for fmt, (cfg, preset) in WEIGHT_FORMATS.items():
        ref = reference_weights(model, preset, names)
        comp = build(cfg)
        comp.compress(model)
        lins = target_linears(model, comp.targets)
        d = max(maxdiff(lins[n].weight, ref[n]) for n in names)
        ndiff = sum(int((lins[n].weight != ref[n]).sum()) for n in names)
        rows.append((tag, "weights", fmt, d, ndiff, sum(ref[n].numel() for n in names)))
        for n, lin in lins.items():  # back to dense for the next format
            lin.weight.data.copy_(dense[n])
    acts, kv = capture(model, tok)
    for fmt, (cfg, preset) in ACT_FORMATS.items():
        comp = build(cfg)
        aargs = R.scheme(preset)[1]
        d, ndiff, tot = 0.0, 0, 0
        for x in acts.values():
            if aargs.group_size and x.shape[-1] % aargs.group_size:
                continue  # compressed-tensors needs divisible widths (576 / 128): lcc's shorter last group has no reference
            ours, ref = comp.quantize_input(x), R.activation(x, aargs)
            d, ndiff, tot = max(d, maxdiff(ours, ref)), ndiff + int((ours != ref).sum()), tot + x.numel()
        rows.append((tag, "activations", fmt, d, ndiff, tot))
    for scale in ("tensor", "head"):
        spec = KVSpec(4, 128, "channel", False, False, 0, 0, "fp8", scale)
        d, ndiff, tot = 0.0, 0, 0
        for x in kv.values():
            ours, ref = spec.quant_keys(x), R.kv(x, scale == "head")
            ours_v = spec.quant_values(x)
            d = max(d, maxdiff(ours, ref), maxdiff(ours_v, ref))
            ndiff, tot = ndiff + int((ours != ref).sum()), tot + x.numel()
        rows.append((tag, "KV states", f"FP8 KV per {scale}", d, ndiff, tot))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-bf16", action="store_true", help="fp32 only")
    a = ap.parse_args(argv)
    import compressed_tensors
    print(f"reference: compressed-tensors {compressed_tensors.__version__}, torch {torch.__version__}")
    rows: list = []
    compare(torch.float32, rows)
    if not a.no_bf16:
        compare(torch.bfloat16, rows)
    print("| dtype | tensors | format | max abs diff | values differing | values |")
    print("|---|---|---|---:|---:|---:|")
    for tag, kind, fmt, d, nd, tot in rows:
        print(f"| {tag} | {kind} | {fmt} | {d:.3g} | {nd} | {tot} |")
    fp32_bad = [r for r in rows if r[0] == "float32" and r[3] != 0]
    return 1 if fp32_bad else 0


if __name__ == "__main__":
    sys.exit(main())
