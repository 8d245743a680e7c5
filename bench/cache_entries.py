"""Compressed-cache entry sizes and times on the embedded SmolLM2 (CPU): for each compressor level, one job that
misses (compresses, writes the entry) and one that hits (reads, checks and decodes it), in a fresh cache folder.

    .venv/bin/python bench/cache_entries.py [--out results.json] [--levels quant-w4 ...]

Prints one line per level: entry MiB, bits per targeted weight, compress_s, write s (miss: cache time),
hit s (read + checksum + decode + apply), and whether the two jobs' numbers are identical."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CALIB = ["calib.n_samples=16", "calib.seqlen=512"]
LEVELS = {
    "quant-w4g128": ["compressor=quant", "compressor.bits=4", "compressor.group_size=128"],
    "quant-w3g128": ["compressor=quant", "compressor.bits=3", "compressor.group_size=128"],
    "quant-w8g128": ["compressor=quant", "compressor.bits=8", "compressor.group_size=128"],
    "mixed-default": ["compressor=mixed"],
    "gptq-w4g128": ["compressor=gptq", *CALIB],
    "gptq-w4g128-act": ["compressor=gptq", "compressor.act_order=true", *CALIB],
    "gptq-w3g128": ["compressor=gptq", "compressor.bits=3", *CALIB],
}


def main() -> None:
    from hydra import compose, initialize_config_dir

    import lcc.sweep  # noqa: F401
    from lcc.compressors.base import Targets, target_linears
    from lcc.job import run

    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", nargs="*", default=list(LEVELS))
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(ROOT / "lcc" / "conf"),
                                                                     version_base="1.3"):
        tmp = Path(tmp)
        n_weights = None
        for name in a.levels:
            res = []
            for i, ctx in enumerate((256, 512)):
                cfg = compose("sweep", overrides=[f"model={a.model}", "logger=none", "n_docs=1", f"ctx.tokens={ctx}",
                                                  *LEVELS[name], f"output_dir={tmp / name / str(ctx)}",
                                                  f"++cache.dir={tmp / 'cache'}", "++cache.compressed=true"])
                res.append(run(cfg))
            miss, hit = res
            assert (miss["cache"]["compressed"], hit["cache"]["compressed"]) == ("miss", "hit"), (miss["cache"], hit["cache"])
            entry = tmp / "cache" / "compressed" / miss["cache"]["compressed_key"]
            nbytes = sum(p.stat().st_size for p in entry.iterdir())
            if n_weights is None:
                from lcc.models import load_model
                import torch
                model, _, _ = load_model(cfg.model, torch.device("cpu"), torch.float32)
                n_weights = sum(l.weight.numel() for l in target_linears(model, Targets()).values())
                del model
            meta = json.loads((entry / "meta.json").read_text())
            row = {"level": name, "entry_MiB": nbytes / 2**20, "bits_per_weight": 8 * nbytes / n_weights,
                   "compress_s": miss["timings"]["compress_s"], "write_s": miss["timings"]["compress_cache_s"],
                   "hit_s": hit["timings"]["compress_cache_s"], "encoding": meta["inputs"]["encoding"],
                   "codec": meta["facts"].get("codec", {}).get("summary")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
