"""Compare two runs of scripts/reference_sweep.sh (or any two sweep folders) job by job, bit for bit.

usage: python scripts/compare_sweeps.py <before dir> <after dir>
Numbers: summary, curve (result.json), compress_info, level, compressor, status, tokens.safetensors (every
tensor, torch.equal) and curve.parquet (DataFrame.equals); of task jobs also task, task_params, by_depth, lm_eval,
ruler and samples.parquet without its timing columns (seconds_*). A key that only the after result has (e.g.
``weights`` of an lm_eval job, which it lacked before) is listed as an addition, not as a difference. Configs: the resolved config without output_dir
and cache.dir, and config_hash (reported separately). Exit 1 on any difference in the numbers."""
import json
import sys
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file



def strip(conf: dict) -> dict:
    """A job's resolved config without where it ran (output_dir, cache.dir)."""
    return {k: v for k, v in conf.items() if k != "output_dir"} | {
        "cache": {k: v for k, v in conf.get("cache", {}).items() if k != "dir"}}


before, after = Path(sys.argv[1]), Path(sys.argv[2])
jobs_b = {p.parent.relative_to(before) for p in before.rglob("result.json")}
jobs_a = {p.parent.relative_to(after) for p in after.rglob("result.json")}
bad, cfg_diff, added, n = [], [], [], 0
for j in sorted(jobs_b | jobs_a, key=str):
    if j not in jobs_a or j not in jobs_b:
        bad.append(f"{j}: only in {'before' if j in jobs_b else 'after'}")
        continue
    rb, ra = (json.loads((d / j / "result.json").read_text()) for d in (before, after))
    n += 1
    for k in ("status", "compressor", "level", "ctx", "model", "data", "compress_info", "weights", "summary", "curve",
              "task", "task_params", "by_depth", "lm_eval", "ruler"):
        if k not in rb and k in ra:
            added.append(f"{j}: {k} (new)")
        elif rb.get(k) != ra.get(k):
            bad.append(f"{j}: {k} differs:\n  before {rb.get(k)}\n  after  {ra.get(k)}")
    cb, ca = (r.get("cache", {}) for r in (rb, ra))
    for k in ("dense", "compressed"):
        if cb.get(k) != ca.get(k):
            bad.append(f"{j}: cache.{k} {cb.get(k)} -> {ca.get(k)}")
    if sorted(rb.get("files", [])) != sorted(ra.get("files", [])):
        bad.append(f"{j}: files {rb.get('files')} -> {ra.get('files')}")
    if "tokens.safetensors" in rb.get("files", []):
        tb, ta = load_file(before / j / "tokens.safetensors"), load_file(after / j / "tokens.safetensors")
        if set(tb) != set(ta) or not all(torch.equal(tb[k], ta[k]) for k in tb):
            bad.append(f"{j}: tokens.safetensors differ")
    if "curve.parquet" in rb.get("files", []):
        if not pd.read_parquet(before / j / "curve.parquet").equals(pd.read_parquet(after / j / "curve.parquet")):
            bad.append(f"{j}: curve.parquet differs")
    if "samples.parquet" in rb.get("files", []):
        sb, sa = (pd.read_parquet(d / j / "samples.parquet") for d in (before, after))
        sb, sa = (s.drop(columns=[c for c in s.columns if c.startswith("seconds_")]) for s in (sb, sa))
        if not sb.equals(sa):
            bad.append(f"{j}: samples.parquet differs")
    if strip(rb["config"]) != strip(ra["config"]) or rb["config_hash"] != ra["config_hash"]:
        cfg_diff.append(f"{j}: compressor config {rb['config']['compressor']} -> {ra['config']['compressor']} "
                        f"(hash {rb['config_hash']} -> {ra['config_hash']})")
print(f"{n} jobs compared: {len(bad)} with different numbers")
print("\n".join(bad))
print(f"{len(added)} entries only in the after results (additions):")
print("\n".join(added))
print(f"{len(cfg_diff)} jobs with a different resolved config / config_hash (numbers compared above):")
print("\n".join(cfg_diff))
sys.exit(1 if bad or not n else 0)
