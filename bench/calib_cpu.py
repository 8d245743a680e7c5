#!/usr/bin/env python3
"""Whole-model calibrated compression on the real SmolLM2-135M (CPU): time of each compressor, the floor
beside it, and the mean KL of the compressed model on a short evaluation.

floor = the engine with the compressor's own statistics and a rule that does nothing: the calibration
forwards through every block (twice: statistics pass and propagation) plus the statistics (Hessian or
norms). Uses only APIs that predate issue 12, so the same script times the code before and after:

    python bench/calib_cpu.py --json after.json
    PYTHONPATH=/path/to/main/checkout python bench/calib_cpu.py --json before.json
    python bench/calib_cpu.py --table before.json after.json   # the markdown table of both
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

COMPRESSORS = {"gptq": {"name": "gptq", "bits": 4, "group_size": 128},
               "sparsegpt": {"name": "sparsegpt", "sparsity": 0.5},
               "wanda": {"name": "wanda", "sparsity": 0.5}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calib", default="16x512", help="calibration samples x seqlen (pydoc text)")
    p.add_argument("--eval", default="2x512", help="evaluation windows x tokens for the mean KL")
    p.add_argument("--compressors", default="gptq,sparsegpt")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared machine, two threads spin against other jobs)")
    p.add_argument("--json", default=None)
    p.add_argument("--table", nargs=2, metavar=("BEFORE", "AFTER"), help="print the markdown table of two runs")
    args = p.parse_args(argv)
    if args.table:
        print(table(*(json.loads(Path(f).read_text()) for f in args.table)))
        return 0

    torch.set_num_threads(args.threads)
    from omegaconf import OmegaConf

    import lcc
    from lcc import compressors
    from lcc.compressors.base import Targets
    from lcc.compressors.engine import HessianStats, NormStats, run_sequential
    from lcc.data import calibration_batch, eval_windows
    from lcc.forward import compressed_pass, dense_pass, logits_fn
    from lcc.models import load_model

    conf = Path(lcc.__file__).parent / "conf"
    mcfg = OmegaConf.load(conf / "model" / "smollm2_135m.yaml")
    dcfg = OmegaConf.load(conf / "data" / "pydoc.yaml")
    dev = torch.device("cpu")
    model, tok, _ = load_model(mcfg, dev, torch.float32)
    n, seqlen = (int(x) for x in args.calib.split("x"))
    calib = calibration_batch({"data": dcfg, "n_samples": n, "seqlen": seqlen, "seed": 0}, tok)
    ne, te = (int(x) for x in args.eval.split("x"))
    windows = eval_windows(dcfg, tok, te, ne, 0)
    hidden, _ = dense_pass(model, windows, keep_on="cpu")
    head = logits_fn(model)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    env = {"code": str(Path(lcc.__file__).parent.parent), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "calib": args.calib, "eval": args.eval}
    rows = []
    print(f"[env] {json.dumps(env)}", flush=True)

    def floor(stats_cls):
        t0 = time.perf_counter()
        run_sequential(model, calib, Targets(), stats_cls(), lambda *a: None, desc="floor")
        return time.perf_counter() - t0

    floors = {}
    for name in args.compressors.split(","):
        comp = compressors.build(COMPRESSORS[name])
        key = comp.stats.__name__
        if key not in floors:
            floors[key] = floor({"HessianStats": HessianStats, "NormStats": NormStats}[key])
            print(f"[floor] {key}: {floors[key]:.1f} s", flush=True)
        model.load_state_dict(dense)
        t0 = time.perf_counter()
        facts = comp.compress(model, calib)
        t = time.perf_counter() - t0
        per_tok, _ = compressed_pass(model, windows, hidden, head, 512)
        kl = per_tok["kl"].double().mean().item()
        rows.append(dict(compressor=name, level=comp.level(), seconds=t, floor_s=floors[key], ratio=t / floors[key],
                         kl_mean=kl, facts={k: v for k, v in facts.items() if isinstance(v, (int, float))}))
        print(f"[compress] {name} ({comp.level()}): {t:.1f} s, floor {floors[key]:.1f} s, ratio "
              f"{t / floors[key]:.2f}; mean KL {kl:.8g}; {rows[-1]['facts']}", flush=True)
        model.load_state_dict(dense)
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    return 0


def table(before: dict, after: dict) -> str:
    lines = [f"CPU ({after['env']['threads']} threads), SmolLM2-135M fp32, calibration {after['env']['calib']} "
             f"pydoc tokens, mean KL over {after['env']['eval']} pydoc tokens.", "",
             "| compressor | level | before s | before floor s | before ratio | after s | after floor s | "
             "after ratio | speed-up | mean KL before | mean KL after |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    b = {r["compressor"]: r for r in before["rows"]}
    for r in after["rows"]:
        o = b.get(r["compressor"])
        if o is None:
            continue
        lines.append(f"| {r['compressor']} | {r['level']} | {o['seconds']:.1f} | {o['floor_s']:.1f} | "
                     f"{o['ratio']:.2f} | {r['seconds']:.1f} | {r['floor_s']:.1f} | {r['ratio']:.2f} | "
                     f"{o['seconds'] / r['seconds']:.2f}x | {o['kl_mean']:.8g} | {r['kl_mean']:.8g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
