"""Compressed-cache entries of quantizers before/after integer codes, on the embedded SmolLM2-135M (or any model
config), timed in one process: compress once, then for the entry as codes (the codec now) and as a full copy of
the weights (the codec before: ``encode`` without grids) the encode, write, and hit (read with checksums + load
with decode and fingerprint check + apply) times, min over ``--repeat`` runs.

    .venv/bin/python bench/cache_codec.py [--levels quant-w4g128 gptq-w4g128 ...] [--model smollm2_135m]
                                          [--device cpu|cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LEVELS = {
    "quant-w4g128": {"name": "quant", "bits": 4, "group_size": 128},
    "quant-w3g128": {"name": "quant", "bits": 3, "group_size": 128},
    "quant-w8g128": {"name": "quant", "bits": 8, "group_size": 128},
    "mixed-default": {"name": "mixed"},
    "gptq-w4g128": {"name": "gptq"},
    "gptq-w4g128-act": {"name": "gptq", "act_order": True},
}


def main() -> None:
    from hydra import compose, initialize_config_dir
    from tqdm.auto import tqdm

    import lcc.sweep  # noqa: F401
    from lcc.cache import CODECS, TensorStore
    from lcc.compressors import Storage, build
    from lcc.data import calibration_batch
    from lcc.models import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", nargs="*", default=list(LEVELS))
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--calib", default="16x512", help="n_samples x seqlen of the calibration (pydoc)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    n_s, seqlen = (int(x) for x in a.calib.split("x"))
    with initialize_config_dir(config_dir=str(ROOT / "lcc" / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=[f"model={a.model}", f"calib.n_samples={n_s}", f"calib.seqlen={seqlen}"])
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    codec = CODECS[Storage.WEIGHTS]
    rows = []

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        store = TensorStore(tmp, "compressed")
        store.ensure_writable()
        for level in tqdm(a.levels, desc="levels"):
            comp = build(LEVELS[level])
            model, tok, _ = load_model(cfg.model, dev, dtype)
            calib = None
            if comp.needs_calibration():
                calib = calibration_batch(cfg.calib, tok)
            lins = comp.touched_linears(model)
            n_w = sum(lin.weight.numel() for lin in lins.values())
            sync()
            t = time.perf_counter()
            comp.compress(model, calib)
            sync()
            compress_s = time.perf_counter() - t
            row = {"level": level, "device": str(dev), "dtype": str(dtype), "weights": n_w,
                   "compress_s": round(compress_s, 3)}
            for kind, grids in (("codes", comp.quant_grids()), ("full", {})):
                best: dict[str, float] = {}
                for r in range(a.repeat):
                    sync()
                    t0 = time.perf_counter()
                    tensors, info = codec.encode(lins, grids)
                    sync()
                    t1 = time.perf_counter()
                    key = f"{level}-{kind}-{r}"
                    meta = store.write(key, tensors, {"facts": {"codec": info}, "inputs": {}})
                    t2 = time.perf_counter()
                    read = store.read(key)
                    t3 = time.perf_counter()
                    loaded = codec.load(lins, read[0], read[1]["facts"]["codec"])
                    sync()
                    t4 = time.perf_counter()
                    codec.apply(lins, loaded)
                    sync()
                    t5 = time.perf_counter()
                    for k, v in {"encode_s": t1 - t0, "write_s": t2 - t1, "read_s": t3 - t2, "decode_s": t4 - t3,
                                 "apply_s": t5 - t4, "hit_s": t5 - t2}.items():
                        best[k] = min(best.get(k, float("inf")), v)
                    store.remove(key)
                    del tensors, read, loaded
                row[kind] = {"MiB": round(meta["bytes"] / 2**20, 2),
                             "bits_per_weight": round(8 * meta["bytes"] / n_w, 3),
                             "summary": info["summary"], **{k: round(v, 3) for k, v in best.items()}}
            rows.append(row)
            tqdm.write(json.dumps(row))
            del model
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
