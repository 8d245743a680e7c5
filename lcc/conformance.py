"""Conformance: every compressor on every architecture of ``lcc.archs`` (tiny random models), each case a real job
through ``lcc.job.run``, judged by what it compressed (``tests/test_architectures.py``; ``scripts/architectures.py``
writes the support matrix, docs/architectures.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

import lcc.sweep  # noqa: F401  (the compressor configs and resolvers)
from lcc import ConfigError
from lcc.archs import BASE, tiny_config
from lcc.compressors.press import presses
from lcc.job import run

#: the compressors of the matrix (each at its default level) and the task jobs
COMPRESSORS = ("magnitude", "random", "quant", "wanda", "sparsegpt", "gptq", "quant_wa", "mixed", "kv")
#: compressors merged after the first matrix: weight formats, calibrated scale migration and rotation, and the
#: KV-eviction presses (judged like kv: every attention module hooked)
NEW_COMPRESSORS = ("fp8", "mxfp4", "mxfp8", "nvfp4", "smoothquant", "awq", "rotate",
                   "streaming_llm", "knorm", "random_kv", "h2o", "tova", "snapkv", "pyramidkv", "adakv",
                   "expected_attention")
#: presses read the KL text in chunks of this many tokens, so the cache is evicted and read again (ctx 128)
PRESS_CHUNK = 32
TASK_CASES = (("passkey", "quant"), ("passkey", "kv"))
FULL_KINDS = ("attention", "mlp", "experts", "shared_experts")


def is_press(compressor: str) -> bool:
    return compressor in presses()


def case_overrides(arch: str, compressor: str, task: str = "kl") -> list[str]:
    """The overrides of one conformance job (``model=tiny_arch``: byte tokenizer, 256-token vocabulary)."""
    common = ["model=tiny_arch", f"model.arch={arch}", "logger=none", f"compressor={compressor}",
              "calib.n_samples=4", "calib.seqlen=64", "cache.enabled=false", "resume=false"]
    if task == "kl":
        return common + ["n_docs=1", "ctx.tokens=128"] + ([f"compressor.chunk={PRESS_CHUNK}"] if is_press(compressor)
                                                          else [])
    return common + [f"task={task}", "task.n_samples=1", "task.depths=[0.5]", "ctx.tokens=512"]


def run_case(arch: str, compressor: str, task: str, out: str | Path) -> dict[str, Any]:
    """One conformance job through ``lcc.job.run``: ``{"status": "ok" | "refused" | "failed", "reason",
    "coverage"}``. ``ok`` means it ran and every weight of the attention / MLP / experts kinds was changed (weight
    compressors) or every attention module was wrapped (kv, presses); ``refused`` means a ConfigError raised before
    compressing that names the architecture; anything else is ``failed``."""
    with initialize_config_dir(config_dir=str(Path(__file__).parent / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides=case_overrides(arch, compressor, task) + [f"output_dir={out}"])
    try:
        res = run(cfg)
    except ConfigError as e:
        named = any(s in str(e) for s in (arch, tiny_config(arch).architectures[0] if tiny_config(arch).architectures
                                          else arch)) or "ForCausalLM" in str(e)
        return {"status": "refused" if named else "failed", "reason": str(e), "coverage": None}
    except Exception as e:  # noqa: BLE001 -- the matrix records every failure
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}", "coverage": None}
    cov = (res.get("weights") or {}).get("coverage") or {}
    if compressor == "kv" or is_press(compressor):  # runtime: no weight changes, every attention wrapped/hooked
        n = (res.get("compress_info") or {}).get("n_attention", 0)
        ok = n == BASE["num_hidden_layers"]
        return {"status": "ok" if ok else "failed", "coverage": cov,
                "reason": "" if ok else f"{compressor} wrapped {n} attention modules of {BASE['num_hidden_layers']}"}
    short = [k for k in FULL_KINDS if k in cov and cov[k]["changed"] != cov[k]["params"]]
    return {"status": "failed" if short else "ok", "coverage": cov,
            "reason": f"kinds not fully compressed: {short}" if short else ""}
