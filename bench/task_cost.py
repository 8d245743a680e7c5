#!/usr/bin/env python3
"""What a long-context task job costs on one GPU: time and peak memory of lcc's task scoring at 32k tokens.

A passkey job is: prompts -> dense scoring -> compress in place -> compressed scoring (lcc.tasks.runner). This
runs those steps with lcc's own code (``lcc.tasks`` prompts, ``lcc.tasks.score.score_all``: one prefill of the
ctx prompt with a KV cache, the teacher-forced answer step, greedy decoding) on a random-initialised LLaMA-2-7B-32K
architecture (bench/gpu.py's shapes, bf16, SDPA), with a byte-level tokenizer (the prompt is still exactly ctx
tokens). Random weights never produce the key, so every prompt decodes its whole ``max_new_tokens`` budget:
the worst case of a real model. Peak memory is the GPU's peak over each phase (one model copy, as in a job).

    python bench/task_cost.py                                # llama2_7b_32k, ctx 32768, 3 prompts, quant w4
    python bench/task_cost.py --ctx 8192,32768 --prompts 5 --json /tmp/task_cost.json
    python bench/task_cost.py --small                        # CPU, tiny config, seconds (tests)
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from gpu import build_model, peak_gib, reset_peak, sync  # noqa: E402  (bench/gpu.py)


def measure(model, dev, ctx: int, n: int, max_new: int, compressor: str) -> list[dict]:
    from lcc import compressors, tasks
    from lcc.forward import logits_fn
    from lcc.models import ByteTokenizer
    from lcc.tasks.score import score_all

    tok = ByteTokenizer()
    task = tasks.build({"name": "passkey", "n_samples": n, "depths": [0.5], "max_new_tokens": max_new})
    samples = task.samples(tok, ctx, seed=0)
    rows = []

    def phase(name: str, fn) -> object:
        reset_peak(dev)
        sync(dev)
        t = time.perf_counter()
        res = fn()
        sync(dev)
        s = time.perf_counter() - t
        rows.append({"ctx": ctx, "phase": name, "seconds": s, "peak_gib": peak_gib(dev), "prompts": n})
        print(f"ctx={ctx} {name}: {s:.2f} s, peak {peak_gib(dev):.1f} GiB", flush=True)
        return res

    def decode(ids: list[int]) -> str:  # the random model's ids span its whole vocabulary, the tokenizer's 256
        return tok.decode([i % 256 for i in ids])

    head = logits_fn(model)
    dense = phase("dense scoring", lambda: score_all(model, head, samples, max_new, set(), decode, "dense"))
    comp = compressors.build({"name": compressor})
    phase(f"compress ({comp.name} {comp.level()})", lambda: comp.compress(model, None))
    comp_scored = phase("compressed scoring",
                        lambda: score_all(model, logits_fn(model), samples, max_new, set(), decode, "compressed"))
    for r in rows:
        if "scoring" in r["phase"]:
            r["s_per_prompt"] = r["seconds"] / n
    rows.append({"ctx": ctx, "phase": "tokens generated per prompt", "seconds": None, "peak_gib": None,
                 "prompts": n, "generated": [len(x.generated) for x in dense + comp_scored]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CPU, tiny config, ctx 512 (tests)")
    p.add_argument("--arch", default="llama2_7b_32k")
    p.add_argument("--ctx", default="32768", help="comma list of prompt lengths in tokens")
    p.add_argument("--prompts", type=int, default=3, help="prompts per ctx (each model)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--compressor", default="quant", help="a compressor without calibration (quant, magnitude, kv)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.small:
        a.arch, a.ctx, a.device = "tiny", "512", a.device or "cpu"
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    rows = []
    for ctx in [int(x) for x in a.ctx.split(",")]:
        t = time.perf_counter()
        model = build_model(a.arch, dev, dtype)  # a fresh dense model for every ctx
        print(f"{a.arch} built on {dev} in {time.perf_counter() - t:.1f} s", flush=True)
        rows += measure(model, dev, ctx, a.prompts, a.max_new_tokens, a.compressor)
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    env = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "arch": a.arch, "dtype": str(dtype)}
    print(f"\n{env}\n\n| ctx | phase | s | s / prompt | peak GiB |\n|---:|---|---:|---:|---:|")
    for r in rows:
        if r["seconds"] is not None:
            print(f"| {r['ctx']} | {r['phase']} | {r['seconds']:.2f} | {r.get('s_per_prompt', float('nan')):.2f} "
                  f"| {r['peak_gib']:.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
