#!/usr/bin/env python3
"""What a KV-cache press costs: time and peak memory of task=kl's compressed side (a text read ``chunk`` tokens at a
time through a KV cache the press compresses after every chunk, ``Press.read``) against the floor in the same run,
the same chunked pass without eviction (a press with ratio 0, which removes nothing).

The issue's bar (issue 18): on a GPU, a 7B model at 32k, a press adds at most 20 % to the floor's time and at most
10 % to its peak memory. Random-initialised LLaMA-2-7B-32K architecture (bench/gpu.py's shapes), bf16, SDPA.

    python bench/press_cost.py                                   # 32768 tokens, chunk 4096, every press, ratio 0.5
    python bench/press_cost.py --ctx 32768 --chunk 2048 --presses snapkv,h2o --json /tmp/press_cost.json
    python bench/press_cost.py --small                           # CPU, tiny config, seconds (tests)
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


def main(argv=None) -> int:
    from lcc.compressors import build
    from lcc.compressors.press import presses

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CPU, tiny config, ctx 512 (tests)")
    p.add_argument("--arch", default="llama2_7b_32k")
    p.add_argument("--ctx", type=int, default=32768)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--presses", default=",".join(presses()))
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.small:
        a.arch, a.ctx, a.chunk, a.device, a.reps = "tiny", 512, 128, a.device or "cpu", 1
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = build_model(a.arch, dev, dtype).eval()
    ids = torch.randint(0, model.config.vocab_size, (a.ctx,), generator=torch.Generator().manual_seed(0))
    rows = []

    def run(name: str, params: dict) -> dict:
        press = build({"name": name, "chunk": a.chunk, **params})
        press.compress(model)
        best = None
        for _ in range(a.reps):
            reset_peak(dev)
            sync(dev)
            t = time.perf_counter()
            press.read(model, ids)
            sync(dev)
            s = time.perf_counter() - t
            best = s if best is None else min(best, s)
        row = {"press": name, "level": press.level(), "seconds": best, "peak_gib": peak_gib(dev)}
        print(f"{name} {press.level()}: {best:.2f} s, peak {row['peak_gib']:.2f} GiB", flush=True)
        return row

    floor = run("knorm", {"ratio": 0.0})
    floor["press"] = "floor (no eviction)"
    rows.append(floor)
    for name in a.presses.split(","):
        r = run(name, {"ratio": a.ratio})
        r["time_vs_floor"] = r["seconds"] / floor["seconds"] - 1
        r["peak_vs_floor"] = (r["peak_gib"] / floor["peak_gib"] - 1) if floor["peak_gib"] else None
        rows.append(r)
    env = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "arch": a.arch, "dtype": str(dtype), "ctx": a.ctx, "chunk": a.chunk}
    print(f"\n{env}\n\n| press | level | s | vs floor | peak GiB | vs floor |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        tv, pv = r.get("time_vs_floor"), r.get("peak_vs_floor")
        print(f"| {r['press']} | {r['level']} | {r['seconds']:.2f} | {'' if tv is None else f'{tv:+.0%}'} "
              f"| {r['peak_gib']:.2f} | {'' if pv is None else f'{pv:+.0%}'} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
