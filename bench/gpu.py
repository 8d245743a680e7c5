#!/usr/bin/env python3
"""lcc on one GPU against the hardware floor, measured side by side in one process.

Random-initialised weights of real architectures (LLaMA-2-7B-32K, Llama-3-8B shapes), bf16, SDPA:

* floor: a bare dense forward ``model(input_ids, use_cache=False)`` over one document of each length;
* eval: lcc's own job steps (``lcc.tasks.kl``: ``dense_step`` -> ``compress_model`` (in place) ->
  ``compare_step`` -> ``summarize``) over the same documents, without the dense-reference cache (both
  passes) and with it (a hit of ``dense_step`` through ``lcc.cache.DenseCache``, then the compressed pass);
  each as a ratio to the floor of this run; and the peak GPU memory of that evaluation (one model copy:
  compression is in place after the dense pass, as in ``lcc.job``);
* compress: each compressor's ``compress`` on the first architecture with random calibration ids.

``--small`` runs everything on the CPU with a tiny config in seconds (tests, CI).
Prints a markdown table last; ``--write-docs PATH`` also writes it into PATH (between markers, if present).

    python bench/gpu.py                       # everything, on the GPU
    python bench/gpu.py --sections floor,eval --archs llama3_8b --lengths 4096,32768
    python bench/gpu.py --small
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GIB = 2 ** 30

ARCHS = {
    # togethercomputer/LLaMA-2-7B-32K: Llama-2-7B with linear RoPE scaling x8 to 32k positions
    "llama2_7b_32k": dict(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, intermediate_size=11008, max_position_embeddings=32768,
                          rms_norm_eps=1e-5, tie_word_embeddings=False,
                          rope_parameters={"rope_type": "linear", "factor": 8.0, "rope_theta": 10000.0}),
    # meta-llama/Llama-3-8B shapes (GQA 32/8, vocab 128256, theta 5e5), with Llama-3.1's 'llama3' RoPE
    # scaling so that 32k positions are in range (the scaling does not change the cost)
    "llama3_8b": dict(vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, intermediate_size=14336, max_position_embeddings=131072,
                      rms_norm_eps=1e-5, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
                                       "rope_theta": 500000.0}),
    # allenai/OLMoE-1B-7B-0924 shapes: 16 blocks of 64 experts (top-8, 1024 wide), QK-norm; fused 3-D experts
    "olmoe_1b_7b": dict(model_type="olmoe", vocab_size=50304, hidden_size=2048, num_hidden_layers=16,
                        num_attention_heads=16, num_key_value_heads=16, intermediate_size=1024, num_experts=64,
                        num_experts_per_tok=8, max_position_embeddings=4096, rms_norm_eps=1e-5,
                        tie_word_embeddings=False),
    # Qwen/Qwen3-30B-A3B shapes, 2 of its 48 blocks (128 experts, top-8, 768 wide; GQA 32/4, head_dim 128):
    # the per-block time of the compress section (x48 for the model; the whole model does not fit beside the
    # calibration activations on one 80 GB GPU in bf16)
    "qwen3_30b_a3b_2blocks": dict(model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=2,
                                  num_attention_heads=32, num_key_value_heads=4, head_dim=128, intermediate_size=6144,
                                  moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
                                  max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False),
    # a CPU-sized MoE (OLMoE layout: 4 blocks of 16 experts, top-4, 512 wide): the MoE times of docs/benchmarks.md
    "moe_cpu": dict(model_type="olmoe", vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=8, intermediate_size=512, num_experts=16, num_experts_per_tok=4,
                    max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # --small MoE: seconds on a CPU (OLMoE layout, 8 experts)
    "tiny_moe": dict(model_type="olmoe", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=128, num_experts=8, num_experts_per_tok=2,
                     max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # --small: seconds on a CPU
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=4096,
                 rms_norm_eps=1e-5, tie_word_embeddings=False,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}

#: compressor -> target seconds on the 7B architecture with 128 x 2048 calibration tokens
COMPRESS_TARGETS = {"quant": 15, "magnitude": 15, "wanda": 15, "sparsegpt": 60, "gptq": 120, "gptq_act": 120,
                    "fp8": 15, "fp8_block": 15, "mxfp4": 15, "mxfp8": 15, "nvfp4": 15,
                    "awq": 120, "smoothquant": 120, "rotate": 15}
RATIO_TARGET = 1.10
MEM_TARGET_GIB = {"llama3_8b": 40.0}
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
CBEGIN, CEND = "<!-- bench-compress:begin -->", "<!-- bench-compress:end -->"


# ---- helpers ----------------------------------------------------------------------------------------
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev: torch.device) -> float:
    return torch.cuda.max_memory_allocated(dev) / GIB if dev.type == "cuda" else float("nan")


def timed(fn, dev: torch.device, reps: int, warmup: int = 1) -> tuple[float, list[float], object]:
    """Median wall seconds of ``fn()`` (device synchronised), all times, and the last result."""
    res = None
    for _ in range(warmup):
        res = fn()
        del res
        res = None
    times = []
    for _ in range(reps):
        sync(dev)
        t0 = time.perf_counter()
        res = fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, res


def build_model(arch: str, dev: torch.device, dtype: torch.dtype, attn: str = "sdpa"):
    """Random-initialised LlamaForCausalLM of ``arch`` (or the ``model_type`` it names: MoE), built directly on
    ``dev`` in ``dtype``."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    spec = dict(ARCHS[arch])
    mtype = spec.pop("model_type", None)
    cfg = AutoConfig.for_model(mtype, **spec) if mtype else LlamaConfig(**spec)
    cfg._attn_implementation = attn
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(dev):
            model = AutoModelForCausalLM.from_config(cfg) if mtype else LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval().requires_grad_(False)
    if arch.startswith("tiny"):  # peaked outputs, as lcc.models.tiny_llama
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
    return model


@torch.no_grad()
def reinit_(model) -> None:
    """Fresh random weights in place (a 'dense' model again after an in-place compression)."""
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def documents(vocab: int, lengths: list[int], seed: int = 0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randint(0, vocab, (1, n), generator=g) for n in lengths}


# ---- sections ---------------------------------------------------------------------------------------
@torch.inference_mode()
def floor_forward(model, ids: torch.Tensor) -> float:
    out = model(input_ids=ids, use_cache=False)
    return out.logits.shape[1]


def section_floor(model, docs, dev, reps, rows, arch):
    for n, ids in docs.items():
        ids_dev = ids.to(dev)
        torch.cuda.empty_cache() if dev.type == "cuda" else None
        reset_peak(dev)
        med, times, _ = timed(lambda: floor_forward(model, ids_dev), dev, reps)
        rows.setdefault((arch, n), {}).update(floor_s=med, floor_times=times, floor_peak_gib=peak_gib(dev))
        print(f"[floor] {arch} {n:>6} tokens: {med:.4f} s  (reps {['%.4f' % t for t in times]}, "
              f"peak {peak_gib(dev):.2f} GiB)", flush=True)


def _cache_roundtrip(model, store_dir: Path, key: str, windows: torch.Tensor, keep_on):
    """The job's dense step through a dense-reference cache entry: a miss stores it; returns a function that
    runs the step again (a hit: the entry read back, checksum- and token-id-verified)."""
    from lcc.cache import DenseCache, TensorStore
    from lcc.tasks.kl import dense_step

    cache = DenseCache(TensorStore(store_dir, "dense"), {"bench": key})
    kw = {} if keep_on is None else {"keep_on": keep_on}
    assert dense_step(model, windows, cache, **kw).status in ("miss", "hit")

    def hit():
        ref = dense_step(model, windows, cache, **kw)
        assert ref.status == "hit", "cache entry did not read back"
        return ref.hidden
    return hit


def interleaved(fns: dict, dev: torch.device, reps: int, warmup: int = 1) -> tuple[dict, dict, dict]:
    """Time several functions side by side: every repetition runs each once, in turn, so that all see the
    same GPU state (clocks, temperature). Medians, all times, and each function's last result."""
    times = {k: [] for k in fns}
    last = {}
    for i in range(warmup + reps):
        for k, fn in fns.items():
            last[k] = None
            sync(dev)
            t0 = time.perf_counter()
            last[k] = fn()
            sync(dev)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, times, last


def section_eval(model, docs, dev, reps, rows, arch, compressor: str, chunk_size: int, keep_on: str,
                 metrics_kernels: list[str], cache_dir: Path | None):
    """lcc's job flow (as lcc.tasks.kl.KL.run): dense pass of every document, compress in place, compressed
    pass + metrics + summary; each timed side by side with the bare forward (the floor) of the same
    document on the same weights; peak memory per length."""
    from lcc import compressors
    from lcc.context import compress_model, dense_head
    from lcc.tasks.kl import compare_step, dense_step
    from lcc.metrics import summarize

    kw = {} if keep_on is None else {"keep_on": keep_on}
    dense_hidden, hits = {}, {}
    for n, ids in docs.items():
        ids_dev = ids.to(dev)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        med, times, last = interleaved({"floor": lambda: floor_forward(model, ids_dev),
                                        "dense": lambda: dense_step(model, ids, **kw)}, dev, reps)
        res = last["dense"]
        del last
        reset_peak(dev)  # the peak of lcc alone (the bare forward's full logits are not lcc's)
        ref = dense_step(model, ids, **kw)
        res = ref.hidden, ref.forward_s
        dense_hidden[n] = res[0]
        if cache_dir is not None:  # store the entry now, while the model is dense
            hits[n] = _cache_roundtrip(model, cache_dir, f"bench-{arch}-{n}", ids, keep_on)
        r = rows.setdefault((arch, n), {})
        r.update(floor_dense_s=med["floor"], dense_s=med["dense"], dense_fwd_s=res[1], dense_times=times["dense"],
                 peak_dense_gib=peak_gib(dev), hidden_on=str(res[0][0].device))
        print(f"[eval] {arch} {n:>6} dense_step: {med['dense']:.4f} s (forward part {res[1]:.4f} s, hidden kept on "
              f"{res[0][0].device}); bare forward alongside {med['floor']:.4f} s", flush=True)
    comp = compressors.build({"name": compressor})
    head = dense_head(model, comp)
    reset_peak(dev)
    sync(dev)
    t0 = time.perf_counter()
    info = compress_model(comp, model, None).info
    sync(dev)
    t_comp = time.perf_counter() - t0
    peak_comp = peak_gib(dev)
    print(f"[eval] {arch} compress {compressor} ({comp.level()}): {t_comp:.2f} s, peak {peak_comp:.2f} GiB "
          f"{info}", flush=True)

    have_cache = cache_dir is not None
    for n, ids in docs.items():
        r = rows[(arch, n)]
        r.update(compress_s=t_comp, peak_compress_gib=peak_comp, compressor=f"{compressor} {comp.level()}")
        ids_dev = ids.to(dev)
        if have_cache:  # a cache hit returns CPU tensors read from disk (checksum-verified)
            med, _, last = interleaved({"read": hits[n]}, dev, reps)
            r.update(cache_read_s=med["read"])
            cached = last["read"]
            print(f"[eval] {arch} {n:>6} cache hit of dense_step (checksum-verified read): {med['read']:.4f} s",
                  flush=True)
        else:  # what a hit hands to the compressed pass: the dense hidden states in CPU memory
            cached = [h.cpu() for h in dense_hidden[n]]

        def comp_and_summary(hidden):
            compared = compare_step(model, ids, hidden, head, chunk_size)
            summary, _ = summarize(compared.arrays)
            return {"compressed_forward_s": compared.forward_s, "metrics_s": compared.metrics_s}, summary
        for kern in metrics_kernels:
            os.environ["LCC_METRICS_KERNEL"] = kern
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            fns = {"floor": lambda: floor_forward(model, ids_dev),
                   "comp": lambda: comp_and_summary(dense_hidden[n]),
                   "comp_cached": lambda: comp_and_summary(cached)}
            med, times, last = interleaved(fns, dev, reps)
            del last
            peak = 0.0
            for hidden in (dense_hidden[n], cached):  # the peak of lcc alone, for either source of hidden
                reset_peak(dev)
                tm, summary = comp_and_summary(hidden)
                peak = max(peak, peak_gib(dev))
            sfx = "" if kern == metrics_kernels[0] else f"_{kern}"
            r.update({f"floor_comp_s{sfx}": med["floor"], f"comp_s{sfx}": med["comp"],
                      f"comp_cached_s{sfx}": med["comp_cached"], f"comp_fwd_s{sfx}": tm["compressed_forward_s"],
                      f"metrics_s{sfx}": tm["metrics_s"], f"comp_times{sfx}": times["comp"],
                      f"peak_comp_gib{sfx}": peak, f"kl_mean{sfx}": summary["kl_mean"]})
            print(f"[eval] {arch} {n:>6} compare_step+summarize [metrics {kern}]: {med['comp']:.4f} s "
                  f"(forward {tm['compressed_forward_s']:.4f}, metrics {tm['metrics_s']:.4f}); from CPU (cache) "
                  f"hidden {med['comp_cached']:.4f} s; bare forward alongside {med['floor']:.4f} s; "
                  f"KL mean {summary['kl_mean']:.4g}, top1 {summary['top1_agree']:.3f}", flush=True)
        os.environ["LCC_METRICS_KERNEL"] = metrics_kernels[0]
        r["peak_eval_gib"] = max(r["peak_dense_gib"], peak_comp, r["peak_comp_gib"])
        r["floor_side_s"] = r["floor_dense_s"] + r["floor_comp_s"]
        r["no_cache_s"] = r["dense_s"] + r["comp_s"]
        r["with_cache_s"] = r["comp_cached_s"]
        r["with_cache_read_s"] = r["comp_cached_s"] + r.get("cache_read_s", 0.0)
        r["cache_measured"] = have_cache
    del dense_hidden


def section_profile(model, ids, dev, chunk_size, keep_on, path: Path):
    """torch.profiler of one bare forward, one dense_step and one compare_step at one length: top kernels by time."""
    from torch.profiler import ProfilerActivity, profile

    from lcc.forward import logits_fn
    from lcc.tasks.kl import compare_step, dense_step

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    kw = {} if keep_on is None else {"keep_on": keep_on}
    hidden = dense_step(model, ids, **kw).hidden
    head = logits_fn(model)
    out = []
    ids_dev = ids.to(dev)
    for name, fn in [("bare forward", lambda: floor_forward(model, ids_dev)),
                     ("dense_step", lambda: dense_step(model, ids, **kw)),
                     ("compare_step", lambda: compare_step(model, ids, hidden, head, chunk_size))]:
        fn()
        sync(dev)
        with profile(activities=acts) as prof:
            fn()
            sync(dev)
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
        total = sum(getattr(e, key.replace("_total", "_total"), 0) for e in prof.key_averages())
        out.append(f"==== {name}, {ids.shape[1]} tokens (sum of self device time {total / 1e3:.1f} ms) ====\n"
                   f"{table}\n")
    text = "\n".join(out)
    path.write_text(text)
    print(text[:6000], flush=True)


#: compressor rows of the compress section: label -> config
COMPRESS_SPECS = {
    "quant": {"name": "quant"},
    "magnitude": {"name": "magnitude"},
    "wanda": {"name": "wanda"},
    "sparsegpt": {"name": "sparsegpt"},
    "gptq": {"name": "gptq"},
    "gptq_act": {"name": "gptq", "act_order": True},
    # issue 19's data-free formats, weights only (activation hooks cost nothing at compress time and would stay on
    # the model for the next row): --compressors fp8,fp8_block,mxfp4,mxfp8,nvfp4
    "fp8": {"name": "fp8", "acts": "none"},
    "fp8_block": {"name": "fp8", "weights": "block", "acts": "none"},
    "mxfp4": {"name": "mxfp4"},
    "mxfp8": {"name": "mxfp8"},
    "nvfp4": {"name": "nvfp4"},
}


def _floor_s(model, calib, stats_cls, dev, layers: int) -> float:
    """The floor of a calibrated compressor: lcc's engine over the first ``layers`` blocks with the compressor's
    statistics and a rule that does nothing (capture, the statistics pass with the statistics accumulated,
    the propagation pass)."""
    from lcc.compressors.base import Targets
    from lcc.compressors.engine import run_sequential

    sync(dev)
    t0 = time.perf_counter()
    run_sequential(model, calib, Targets(layers=[0, layers]), stats_cls(), lambda *a: None, desc="floor")
    sync(dev)
    return time.perf_counter() - t0


def _run_compress(model, comp, calib, dev):
    from lcc.context import compress_model

    reinit_(model)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    reset_peak(dev)
    sync(dev)
    t0 = time.perf_counter()
    try:
        info = compress_model(comp, model, calib).info
        status = "ok"
    except Exception as e:  # noqa: BLE001 - report and go on with the next compressor
        info, status = {}, f"failed: {type(e).__name__}: {e}"
    sync(dev)
    return time.perf_counter() - t0, info, status


def section_compress(model, dev, names, rows, arch, calib_shape, calib_layers, partial_for=(), budget_s=0.0,
                     dump=lambda: None):
    """Each compressor's ``compress`` on the whole model (all blocks; ``calib_layers`` > 0: the first N blocks of
    the compressors in ``partial_for``, scaled to the model), beside its floor (:func:`_floor_s`, measured over
    all blocks in the same run) and the ratio. ``budget_s`` > 0: a calibrated compressor that would not fit in
    its share of the remaining budget (from a 1-block probe) is timed on fewer blocks."""
    from lcc import compressors
    from lcc.compressors.base import Targets  # noqa: F401

    n_layers = model.config.num_hidden_layers
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, model.config.vocab_size, calib_shape, generator=g)
    t_start = time.perf_counter()
    floors: dict[str, float] = {}
    todo = [n for n in names]
    for k, name in enumerate(names):
        spec = COMPRESS_SPECS.get(name, {"name": name})
        if spec["name"] not in compressors.REGISTRY:
            rows.append(dict(compressor=name, arch=arch, status="not registered"))
            print(f"[compress] {name}: not registered, skipped", flush=True)
            continue
        comp = compressors.build(spec)
        calibrated = comp.needs_calibration()
        layers = n_layers
        stats_cls = getattr(comp, "stats", None)  # None: calibrated without the engine (smoothquant: no floor)
        if calibrated and stats_cls is not None:
            key = stats_cls.__name__
            if key not in floors:
                reinit_(model)
                floors[key] = _floor_s(model, calib, comp.stats, dev, n_layers)
                print(f"[compress] {arch} floor ({key}: capture, statistics pass, propagation pass; {n_layers} "
                      f"blocks): {floors[key]:.2f} s", flush=True)
            if calib_layers and calib_layers < n_layers and name in partial_for:
                layers = calib_layers
            if budget_s > 0:
                left = budget_s - (time.perf_counter() - t_start)
                share = left / max(1, len([n for n in todo[k:] if n not in ("quant", "magnitude")]))
                probe, _, _ = _run_compress(model, compressors.build({**spec, "targets": {"layers": [0, 1]}}),
                                            calib, dev)
                fit = max(1, int(share / max(probe, 1e-6)))
                if fit < layers:
                    print(f"[compress] {name}: 1 block took {probe:.1f} s; {fit} blocks fit in its share of the "
                          f"budget ({share:.0f} s)", flush=True)
                    layers = fit
            if layers < n_layers:
                comp = compressors.build({**spec, "targets": {"layers": [0, layers]}})
        t, info, status = _run_compress(model, comp, calib if calibrated else None, dev)
        full = t * n_layers / layers
        floor = floors.get(stats_cls.__name__) if calibrated and stats_cls is not None else None
        rows.append(dict(compressor=name, level=comp.level(), arch=arch, status=status, seconds=t,
                         layers_timed=layers, n_layers=n_layers, full_s=full, peak_gib=peak_gib(dev),
                         calib=f"{calib_shape[0]}x{calib_shape[1]}" if calibrated else "-",
                         floor_s=floor, ratio=(full / floor) if floor else None,
                         target_s=COMPRESS_TARGETS.get(name),
                         info={k: v for k, v in info.items() if isinstance(v, (int, float))}))
        print(f"[compress] {arch} {name} ({comp.level()}): {t:.2f} s over {layers}/{n_layers} blocks "
              f"-> {full:.1f} s for the model; floor {_f(floor, '{:.1f}')} s, ratio "
              f"{_f(rows[-1]['ratio'], '{:.2f}')}; peak {peak_gib(dev):.2f} GiB; {status}", flush=True)
        dump()


def section_compress_profile(model, dev, calib_shape, layers: int, path: Path, name: str = "gptq") -> str:
    """torch.profiler of ``name`` over the first ``layers`` blocks: the top operations by device time."""
    from torch.profiler import ProfilerActivity, profile

    from lcc import compressors

    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, model.config.vocab_size, calib_shape, generator=g)
    spec = {**COMPRESS_SPECS.get(name, {"name": name}), "targets": {"layers": [0, layers]}}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    reinit_(model)
    sync(dev)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        compressors.build(spec).compress(model, calib)
        sync(dev)
    wall = time.perf_counter() - t0
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60)
    text = (f"{name} on {layers} blocks, calibration {calib_shape[0]}x{calib_shape[1]}, under the profiler: "
            f"{wall:.2f} s wall; top operations by {key}:\n\n{table}")
    path.write_text(text)
    print(text[:8000], flush=True)
    return text


# ---- report -----------------------------------------------------------------------------------------
def _f(x, fmt="{:.3f}"):
    return "-" if x is None or (isinstance(x, float) and x != x) else fmt.format(x)


def _ok(cond):
    return "-" if cond is None else ("yes" if cond else "**no**")


def report(args, env, eval_rows, comp_rows) -> str:
    lines = [f"GPU: {env['gpu']}; torch {env['torch']}, transformers {env['transformers']}, CUDA {env['cuda']}; "
             f"{env['date']}", "", f"Command: `{env['command']}`", ""]
    if eval_rows:
        lines += ["| arch | tokens | bare fwd s | lcc no-cache s | / 2 bare fwd | lcc with-cache s | / bare fwd | "
                  "+ cache read s | / bare fwd | metrics s | peak lcc GiB | peak bare fwd GiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

        def ratio(x, ref):
            if not x or not ref:
                return "-"
            q = x / ref
            return f"{q:.3f} {'ok' if q <= RATIO_TARGET else 'MISS'}"
        for (arch, n), r in sorted(eval_rows.items()):
            fa, fb = r.get("floor_dense_s"), r.get("floor_comp_s")
            fl = fb or r.get("floor_s")
            lines.append(f"| {arch} | {n} | {_f(fl, '{:.4f}')} | {_f(r.get('no_cache_s'), '{:.4f}')} | "
                         f"{ratio(r.get('no_cache_s'), (fa + fb) if fa and fb else None)} | "
                         f"{_f(r.get('with_cache_s'), '{:.4f}')} | {ratio(r.get('with_cache_s'), fb)} | "
                         f"{_f(r.get('with_cache_read_s') if r.get('cache_measured') else None, '{:.4f}')} | "
                         f"{ratio(r.get('with_cache_read_s') if r.get('cache_measured') else None, fb)} | "
                         f"{_f(r.get('metrics_s'), '{:.4f}')} | {_f(r.get('peak_eval_gib'), '{:.2f}')} | "
                         f"{_f(r.get('floor_peak_gib'), '{:.2f}')} |")
        alt = [k for r in eval_rows.values() for k in r if k.startswith("comp_s_")]
        if alt:
            lines += ["", "Compressed pass with the other metrics implementation (same run):", "",
                      "| arch | tokens | kernel | compare_step s | metrics s | KL mean (default kernel) |",
                      "|---|---:|---|---:|---:|---|"]
            for (arch, n), r in sorted(eval_rows.items()):
                for k in sorted({a[len('comp_s_'):] for a in alt}):
                    if f"comp_s_{k}" in r:
                        lines.append(f"| {arch} | {n} | {k} | {_f(r[f'comp_s_{k}'], '{:.4f}')} | "
                                     f"{_f(r[f'metrics_s_{k}'], '{:.4f}')} | {r[f'kl_mean_{k}']:.6g} "
                                     f"({r.get('kl_mean', float('nan')):.6g}) |")
        some = next(iter(eval_rows.values()))
        if "cache_measured" in some:
            lines += ["", f"bare fwd = `model(ids, use_cache=False)` (full logits), timed alternately with the lcc "
                          f"pass it is compared with, on the same weights (median of {args.reps or '-'} after a "
                          f"warm-up). lcc no-cache = dense_step + compare_step + summarize; compression itself "
                          f"({some.get('compressor')}, {_f(some.get('compress_s'), '{:.2f}')} s) excluded. "
                          f"lcc with-cache = compare_step + summarize on dense hidden states in CPU memory, as a "
                          f"cache hit returns them; + cache read adds a serial cache hit of `dense_step` "
                          f"(xxh3-checked) of the entry. Ratio target <= {RATIO_TARGET}. Peak = max allocated over "
                          f"the lcc evaluation of that length (dense pass, in-place compression, compressed pass); "
                          f"lcc never holds two model copies."]
    for arch, gib in env.get("mem_checks", {}).items():
        tgt = MEM_TARGET_GIB.get(arch)
        lines.append(f"\nPeak GPU memory of the lcc evaluation of {arch} at {env['max_len']} tokens: {gib:.2f} GiB"
                     + (f" (target <= {tgt} GiB: {'met' if gib <= tgt else 'MISSED'})" if tgt else ""))
    return "\n".join(lines) + "\n"


def compress_report(env, comp_rows, profile: str | None = None) -> str:
    """The compress section's table: whole-model seconds, the floor and the ratio, per compressor."""
    lines = [f"Device: {env['gpu']}; torch {env['torch']}, transformers {env['transformers']}, CUDA {env['cuda']}; "
             f"{env['date']}", "", f"Command: `{env['command']}`", "",
             "| compressor | level | arch | calibration | blocks timed | seconds | full model s | floor s | "
             "ratio | target s | met | peak GiB | status |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in comp_rows:
        if r["status"] == "not registered":
            lines.append(f"| {r['compressor']} | - | {r['arch']} | - | - | - | - | - | - | "
                         f"{_f(COMPRESS_TARGETS.get(r['compressor']), '{}')} | - | - | not registered |")
            continue
        tgt = r.get("target_s")
        met = None if tgt is None or r["status"] != "ok" else r["full_s"] <= tgt
        lines.append(f"| {r['compressor']} | {r['level']} | {r['arch']} | {r['calib']} | "
                     f"{r['layers_timed']}/{r['n_layers']} | {r['seconds']:.2f} | {r['full_s']:.1f} | "
                     f"{_f(r.get('floor_s'), '{:.1f}')} | {_f(r.get('ratio'), '{:.2f}')} | {_f(tgt, '{}')} | "
                     f"{_ok(met)} | {_f(r['peak_gib'], '{:.2f}')} | {r['status']} |")
    lines += ["", "full model s = seconds x all blocks / blocks timed (equal when every block is timed). floor = lcc's "
                  "engine over all blocks with the compressor's statistics and a rule that does nothing (capture of "
                  "block 0's inputs, the statistics pass with the Hessians or norms accumulated, the propagation "
                  "pass), same run; ratio = full model s / floor."]
    if profile:
        lines += ["", "Profile of the largest remaining cost:", "", "```", profile.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_docs(path: Path, table: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``table`` between the ``begin``/``end`` markers of ``path`` (appended at the end when the file has
    no such markers; a new file when there is none)."""
    block = f"{begin}\n{table}{end}\n"
    if path.exists() and begin in (text := path.read_text()) and end in text:
        head, rest = text.split(begin, 1)
        path.write_text(head + block + rest.split(end, 1)[1].lstrip("\n"))
    elif path.exists():
        path.write_text(path.read_text().rstrip("\n") + "\n\n" + block)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Benchmarks\n\n" + block)


# ---- main -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CPU, tiny config, seconds (tests/CI)")
    p.add_argument("--archs", default=None, help=f"comma list of {', '.join(ARCHS)}")
    p.add_argument("--lengths", default=None, help="comma list of document lengths in tokens")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (median), after one warm-up")
    p.add_argument("--sections", default="floor,eval,compress", help="comma list of floor, eval, compress, profile")
    p.add_argument("--compressors", default=None,
                   help="compressors to time, comma list (unregistered ones are reported and skipped); default "
                        "quant,magnitude,wanda,sparsegpt,gptq,gptq_act (gptq_act: gptq with act_order)")
    p.add_argument("--compress-arch", default=None, help="architecture for the compress section")
    p.add_argument("--calib", default=None, help="calibration samples x seqlen, e.g. 128x2048")
    p.add_argument("--calib-layers", type=int, default=0,
                   help="time the --calib-layers-for compressors on the first N blocks only and scale to all "
                        "blocks (0: all, the default)")
    p.add_argument("--calib-layers-for", default="sparsegpt,gptq,gptq_act",
                   help="compressors that --calib-layers applies to (comma list)")
    p.add_argument("--compress-budget", type=float, default=0.0,
                   help="seconds for the calibrated compressors together: one that would not fit in its share "
                        "(from a 1-block probe) is timed on fewer blocks (0: no limit)")
    p.add_argument("--profile-blocks", type=int, default=0,
                   help="compress section: also profile gptq over this many blocks (0: no profile)")
    p.add_argument("--eval-compressor", default="quant", help="compressor of the eval section's job")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--keep-on", default=None,
                   help="dense_step keep_on (cpu | auto | cuda); default: its own default, as lcc.job")
    p.add_argument("--metrics-kernels", default="auto",
                   help="metrics implementations to time in the compressed pass: auto (fused on CUDA), torch")
    p.add_argument("--profile-length", type=int, default=None, help="length for the profile section")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="write all numbers to this JSON file")
    p.add_argument("--out-dir", default=None, help="folder for profile tables and the cache test entries")
    p.add_argument("--write-docs", default=None, help="write the table into this markdown file")
    args = p.parse_args(argv)

    small = args.small
    dev = torch.device(args.device or ("cpu" if small or not torch.cuda.is_available() else "cuda"))
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    archs = (args.archs or ("tiny" if small else "llama2_7b_32k,llama3_8b")).split(",")
    lengths = sorted(int(x) for x in (args.lengths or ("128,256" if small else "4096,8192,16384,32768")).split(","))
    reps = args.reps = args.reps or (2 if small else 3)
    sections = set(args.sections.split(","))
    calib_shape = tuple(int(x) for x in (args.calib or ("8x64" if small else "128x2048")).split("x"))
    kernels = args.metrics_kernels.split(",")
    names = (args.compressors or "quant,magnitude,wanda,sparsegpt,gptq,gptq_act").split(",")
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="lcc-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    for a in archs + ([args.compress_arch] if args.compress_arch else []):
        if a not in ARCHS:
            p.error(f"unknown architecture {a!r}; valid: {', '.join(ARCHS)}")

    import transformers
    env = {"gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or 'cpu'}, "
                                                                              f"{torch.get_num_threads()} threads)",
           "torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(),
           "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python bench/gpu.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                 else sys.argv[1:])),
           "max_len": max(lengths), "mem_checks": {}}
    print(f"[env] {json.dumps(env)}", flush=True)
    eval_rows: dict = {}
    comp_rows: list = []
    comp_profile = None

    def dump():
        if args.json:
            Path(args.json).write_text(json.dumps({"env": env, "eval": {f"{a}@{n}": r for (a, n), r in
                                                                          eval_rows.items()},
                                                   "compress": comp_rows}, indent=1, default=str))

    comp_arch = args.compress_arch or archs[0]
    for arch in archs:
        if not sections & {"floor", "eval", "profile"} and arch != comp_arch:
            continue
        t0 = time.perf_counter()
        model = build_model(arch, dev, dtype)
        print(f"[model] {arch}: {n_params(model) / 1e9:.2f} B parameters built on {dev} in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        docs = documents(model.config.vocab_size, lengths)
        if "floor" in sections:
            section_floor(model, docs, dev, reps, eval_rows, arch)
            dump()
        if "profile" in sections:
            n = args.profile_length or lengths[0]
            section_profile(model, documents(model.config.vocab_size, [n])[n], dev, args.chunk_size,
                            args.keep_on, out_dir / f"profile_{arch}_{n}.txt")
        if "eval" in sections:
            section_eval(model, docs, dev, reps, eval_rows, arch, args.eval_compressor, args.chunk_size,
                         args.keep_on, kernels, out_dir / "cache")
            env["mem_checks"][arch] = eval_rows[(arch, max(lengths))]["peak_eval_gib"]
            dump()
        if "compress" in sections and arch == comp_arch:
            section_compress(model, dev, names, comp_rows, arch, calib_shape,
                             args.calib_layers, args.calib_layers_for.split(","), args.compress_budget, dump)
            dump()
            if args.profile_blocks:
                try:
                    comp_profile = section_compress_profile(model, dev, calib_shape, args.profile_blocks,
                                                            out_dir / f"profile_compress_{arch}.txt")
                except Exception as e:  # noqa: BLE001 - the timings above still get written
                    comp_profile = f"profile failed: {type(e).__name__}: {e}"
                    print(f"[compress] {comp_profile}", flush=True)
        del model, docs
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if dev.type == "cpu":
        env["mem_checks"] = {}
    dump()
    if eval_rows or not comp_rows:
        table = report(args, env, eval_rows, comp_rows)
        print("\n" + table, flush=True)
        if args.write_docs:
            write_docs(Path(args.write_docs), table)
    if comp_rows:
        ctable = compress_report(env, comp_rows, comp_profile)
        print("\n" + ctable, flush=True)
        if args.write_docs:
            write_docs(Path(args.write_docs), ctable, CBEGIN, CEND)
    return 0


if __name__ == "__main__":
    sys.exit(main())
