"""lcc's SmoothQuant and AWQ against the authors' code (transcribed in scripts/reference/), on the same weights
and the same calibration batch; prints the max differences of the scales and of the final weights.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/compare_awq_smoothquant.py --model smollm2 --method smoothquant
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/compare_awq_smoothquant.py --model smollm2 --method awq --layers 2
    python scripts/compare_awq_smoothquant.py --model tiny --method awq --json out.json

``--model smollm2``: the embedded SmolLM2-135M-Instruct (fp32 on CPU), calibration = ``--n-samples`` windows of
``--seqlen`` tokens of CPython's docs (lcc's calibration batch, seed 0). ``--model tiny``: lcc's seeded tiny Llama
(4 heads, 4 KV heads, so that AWQ's v_proj -> o_proj scale applies), random token ids.
AWQ runs at ``--group-size`` (default 64: the reference asserts that the group divides every input width;
SmolLM2's 576 is not a multiple of 128).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lcc.compressors import build  # noqa: E402
from lcc.compressors.base import decoder_layers  # noqa: E402


def load(model: str, n_samples: int, seqlen: int, n_layers: int = 0):
    """(model, calibration ids); ``n_layers`` > 0 keeps only the first n decoder blocks (real weights, fewer
    blocks: the reference's clipping search takes minutes per SmolLM2 block on one CPU core)."""
    m, calib = _load(model, n_samples, seqlen)
    if n_layers:
        m.model.layers = m.model.layers[:n_layers]
        m.config.num_hidden_layers = n_layers
    return m, calib


def _load(model: str, n_samples: int, seqlen: int):
    if model == "tiny":
        from lcc.models import tiny_llama
        m = tiny_llama(n_layers=2, n_heads=4, n_kv_heads=4, seed=0).eval()
        calib = torch.randint(0, 256, (n_samples, seqlen), generator=torch.Generator().manual_seed(0))
        return m, calib
    from hydra import compose, initialize_config_dir

    import lcc.sweep  # noqa: F401  (the config's resolvers)
    from lcc.data import calibration_batch
    from lcc.models import load_model
    with initialize_config_dir(config_dir=str(ROOT / "lcc" / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=["model=smollm2_135m", "calib=pydoc", f"calib.n_samples={n_samples}",
                                          f"calib.seqlen={seqlen}", "calib.seed=0"])
    m, tok, _ = load_model(cfg.model, torch.device("cpu"), torch.float32)
    calib = calibration_batch(cfg.calib, tok)
    return m.eval(), calib


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


def linear_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("model.layers.")}


@torch.no_grad()
@torch.no_grad()
def compare_awq(model, calib, group_size: int = 64, bits: int = 4) -> dict:
    from scripts.reference import awq_ref as ref
    dense = copy.deepcopy(model)
    ref_model = copy.deepcopy(model)
    t = time.perf_counter()
    res = ref.run_awq_and_quantize(ref_model, calib, bits, group_size)
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    comp = build({"name": "awq", "bits": bits, "group_size": group_size})
    facts = comp.compress(model, calib)
    t_lcc = time.perf_counter() - t
    ref_scales = {prev: (names, s) for prev, names, s in res["scale"]}
    ours_scales = comp.awq_scales
    out: dict = {"n_scale_groups": [len(ours_scales), len(res["scale"])],
                 "n_clips": [len(comp.awq_clips), len(res["clip"])]}
    # scales: the reference keys them by the previous op, lcc by the first Linear of the group
    rs = {f"layers.{names[0].split('layers.', 1)[1]}": s for _, (names, s) in ref_scales.items()}
    out["scales_keys_equal"] = sorted(rs) == sorted(ours_scales)
    out["scales"] = max(maxdiff(ours_scales[k], rs[k]) for k in rs)
    out["scales_rel"] = max(rel(ours_scales[k], rs[k]) for k in rs)
    rc = {n.split("layers.", 1)[1]: v for n, v in res["clip"]}
    out["clips"] = max(maxdiff(comp.awq_clips["layers." + k][0], rc[k]) for k in rc)
    ours, theirs = linear_weights(model), linear_weights(ref_model)
    out["weights"] = max(maxdiff(ours[k], theirs[k]) for k in ours)
    out["weights_equal"] = all(torch.equal(ours[k], theirs[k]) for k in ours)
    out["weights_differing"] = sum(int((ours[k] != theirs[k]).sum()) for k in ours)
    out["weights_total"] = sum(ours[k].numel() for k in ours)
    ids = calib[:1]
    lo, lr, ld = model(ids).logits, ref_model(ids).logits, dense(ids).logits
    out["logits"] = maxdiff(lo, lr)
    out["logits_vs_dense"] = maxdiff(lo, ld)
    out["mean_ratio"] = facts["mean_ratio"]
    out["seconds_ref"], out["seconds_lcc"] = t_ref, t_lcc
    return out


@torch.no_grad()
def compare_smoothquant(model, calib, alpha: float = 0.5) -> dict:
    from scripts.reference import smoothquant_ref as ref
    dense = copy.deepcopy(model)
    ref_model = copy.deepcopy(model)
    t = time.perf_counter()
    act = ref.get_act_scales(ref_model, calib)
    norms0 = {n: p.clone() for n, p in ref_model.named_parameters() if "layernorm" in n}
    ref.smooth_lm(ref_model, act, alpha)
    ref_s = {n: norms0[n] / p for n, p in ref_model.named_parameters() if "layernorm" in n}
    ref.quantize_llama_like(ref_model)
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    comp = build({"name": "smoothquant", "alpha": alpha})
    comp.compress(model, calib)
    t_lcc = time.perf_counter() - t
    out: dict = {"act_max": 0.0, "scales_rel": 0.0, "weights": 0.0, "norms": 0.0}
    for i, layer in enumerate(decoder_layers(model)):
        for lead, ln in (("self_attn.q_proj", "input_layernorm"), ("mlp.gate_proj", "post_attention_layernorm")):
            a_ref = act[f"model.layers.{i}.{lead}"]
            out["act_max"] = max(out["act_max"], maxdiff(comp.act_max[f"layers.{i}.{lead}"], a_ref))
            out["scales_rel"] = max(out["scales_rel"], rel(comp.smooth_scales[f"layers.{i}.{lead}"],
                                                          ref_s[f"model.layers.{i}.{ln}.weight"]))
    ours, theirs = linear_weights(model), linear_weights(ref_model)
    out["weights"] = max(maxdiff(ours[k], theirs[k]) for k in ours)
    out["weights_equal"] = all(torch.equal(ours[k], theirs[k]) for k in ours)  # norms included
    out["norms"] = max(maxdiff(ours[k], theirs[k]) for k in ours if "layernorm" in k)
    ids = calib[:1]
    lo, lr, ld = model(ids).logits, ref_model(ids).logits, dense(ids).logits
    out["logits"] = maxdiff(lo, lr)
    out["logits_vs_dense"] = maxdiff(lo, ld)
    out["seconds_ref"], out["seconds_lcc"] = t_ref, t_lcc
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2"], default="smollm2")
    p.add_argument("--method", choices=["smoothquant", "awq", "both"], default="both")
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--layers", type=int, default=0, help="keep only the first N decoder blocks (0: all)")
    p.add_argument("--json", help="also write the numbers here")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    res: dict = {"model": a.model, "n_samples": a.n_samples, "seqlen": a.seqlen, "layers": a.layers or "all"}
    if a.method in ("smoothquant", "both"):
        m, calib = load(a.model, a.n_samples, a.seqlen, a.layers)
        res["smoothquant"] = compare_smoothquant(m, calib, a.alpha)
    if a.method in ("awq", "both"):
        m, calib = load(a.model, a.n_samples, a.seqlen, a.layers)
        res["awq"] = compare_awq(m, calib, a.group_size)
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
