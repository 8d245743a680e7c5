"""Reduce's view of KV-cache eviction: accuracy and KL against the fraction of the KV cache removed, presses beside
KV quantization at equal KV memory (files only, like the rest of ``lcc.reduce``).

The x axis is the fraction of KV-cache memory saved: a press's ``ratio`` (or ``1 - budget / ctx``); a ``kv``
job's ``1 - (bits + 32 / group_size) / 16`` (keys and values at ``bits``, plus an fp16 scale and zero per group
of ``group_size``; 4-bit g128: 0.73, 2-bit: 0.86), so a point of each sits at equal memory.

Writes ``presses.csv`` (one row per press or kv job) and, with plots, ``plots/press_accuracy_vs_ratio.png``
(synthetic tasks: one row of panels per task, one panel per ctx, accuracy against the fraction removed, one
line per press and mode, KV quantization as points, the dense accuracy dashed) and
``plots/press_kl_vs_ratio.png`` (task=kl: mean KL against the fraction removed, one panel per ctx).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lcc import tasks
from lcc.compressors.press import presses
from lcc.io import atomic_write, read_json


def _saved(cfg: dict, ctx: int) -> float | None:
    c = cfg.get("compressor", {}) or {}
    if c.get("name") in presses():
        if c.get("budget") is not None:
            return max(0.0, 1 - c["budget"] / ctx)
        return float(c.get("ratio") if c.get("ratio") is not None else 0.5)
    if c.get("name") == "kv":
        gs = c.get("group_size", 128)
        over = 32 / gs if gs and gs > 0 else 32 / ctx
        return 1 - (c.get("bits", 4) + over) / 16
    return None


def _family(cfg: dict) -> str:
    c = cfg.get("compressor", {}) or {}
    if c.get("name") == "kv":
        return "kv quant (equal memory)"
    name = c["name"] + (f"({c.get('press')})" if c.get("name") == "adakv" else "")
    return name + (" query-aware" if c.get("query_aware") else "")


def load(sweep_dir: Path, jobs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    ok = jobs[jobs.status == "ok"] if "status" in jobs else jobs.iloc[:0]
    for _, r in ok.iterrows():
        res = read_json(Path(sweep_dir) / r.job / "result.json")
        cfg, ctx = res.get("config", {}), int(res.get("ctx", 0) or 0)
        saved = _saved(cfg, ctx) if ctx else None
        if saved is None or res.get("lm_eval"):
            continue
        s = res.get("summary", {})
        rows.append({"job": r.job, "task": tasks.task_of(res), "curve": isinstance(res.get("curve"), list),
                     "ctx": ctx, "compressor": res.get("compressor"),
                     "level": res.get("level"), "family": _family(cfg), "kv_saved": round(saved, 4),
                     **{k: s.get(k) for k in ("acc_dense", "acc_compressed", "acc_compressed_se", "kl_answer",
                                              "n_prompts", "kl_mean", "kl_se", "top1_agree")}})
    return pd.DataFrame(rows)


def _num(d: pd.DataFrame, col: str):
    return pd.to_numeric(d[col], errors="coerce").to_numpy(dtype=float) if col in d else None


def figures(sweep_dir: Path, t: pd.DataFrame) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    plots = Path(sweep_dir) / "plots"
    plots.mkdir(exist_ok=True)
    fams = sorted(t.family.unique(), key=lambda f: (f.startswith("kv"), f))
    colors = {f: plt.cm.tab10(i % 10) for i, f in enumerate(fams)}
    syn = t[~t.curve]  # accuracy of the prompt tasks
    if len(syn):
        tasks, ctxs = sorted(syn.task.unique()), sorted(syn.ctx.unique())
        fig, axes = plt.subplots(len(tasks), len(ctxs), figsize=(4 * len(ctxs), 3.2 * len(tasks)), squeeze=False,
                                 sharex=True, sharey=True)
        for i, task in enumerate(tasks):
            for j, ctx in enumerate(ctxs):
                ax = axes[i][j]
                cell = syn[(syn.task == task) & (syn.ctx == ctx)]
                for f in fams:
                    d = cell[cell.family == f].sort_values("kv_saved")
                    if d.empty:
                        continue
                    kv, qa = f.startswith("kv"), f.endswith("query-aware")
                    ax.errorbar(d.kv_saved, d.acc_compressed, yerr=_num(d, "acc_compressed_se"), label=f,
                                color=colors[f], marker="s" if kv else ("^" if qa else "o"),
                                ls="none" if kv else ("--" if qa else "-"), capsize=2, alpha=0.85,
                                ms=7 if qa else 5)
                if len(cell):
                    ax.axhline(cell.acc_dense.mean(), color="k", ls=":", lw=1, label="dense")
                else:
                    ax.text(0.5, 0.5, "no jobs", ha="center", transform=ax.transAxes, color="0.5")
                ax.set_title(f"{task}, ctx {ctx}")
                ax.set_ylim(-0.05, 1.05)
                ax.grid(alpha=0.3)
                if i == len(tasks) - 1:
                    ax.set_xlabel("fraction of KV memory removed")
                if j == 0:
                    ax.set_ylabel("accuracy")
        handles = {lab: h for ax in axes.flat for h, lab in zip(*ax.get_legend_handles_labels())}
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=8)
        fig.tight_layout(rect=(0, 0.08 + 0.02 * (len(handles) // 4), 1, 1))
        p = plots / "press_accuracy_vs_ratio.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        out.append(p)
    kl = t[t.curve]  # mean KL of the jobs with a per-position curve
    if len(kl):
        ctxs = sorted(kl.ctx.unique())
        fig, axes = plt.subplots(1, len(ctxs), figsize=(4.5 * len(ctxs), 3.6), squeeze=False, sharey=True)
        for j, ctx in enumerate(ctxs):
            ax = axes[0][j]
            cell = kl[kl.ctx == ctx]
            for f in fams:
                d = cell[cell.family == f].sort_values("kv_saved")
                if d.empty:
                    continue
                kv = f.startswith("kv")
                ax.errorbar(d.kv_saved, d.kl_mean, yerr=_num(d, "kl_se"), label=f, color=colors[f],
                            marker="s" if kv else "o", ls="none" if kv else "-", capsize=2)
            ax.set_yscale("log")
            ax.set_title(f"task={','.join(sorted(cell.task.unique()))}, ctx {ctx}")
            ax.set_xlabel("fraction of KV memory removed")
            ax.grid(alpha=0.3, which="both")
        axes[0][0].set_ylabel("mean KL(dense || compressed), nats/token")
        handles = {lab: h for ax in axes.flat for h, lab in zip(*ax.get_legend_handles_labels())}
        fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 0.78, 1))
        p = plots / "press_kl_vs_ratio.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        out.append(p)
    return out


def report(sweep_dir: Path, jobs: pd.DataFrame, plots: bool = True) -> tuple[list[str], list[Path]]:
    """(markdown lines, files written) for the press and kv jobs of a sweep; nothing when it has none."""
    t = load(sweep_dir, jobs)
    if t.empty or not (t.family != "kv quant (equal memory)").any():
        return [], []
    t = t.sort_values(["task", "ctx", "family", "kv_saved"])
    files = [atomic_write(Path(sweep_dir) / "presses.csv", lambda tmp: t.to_csv(tmp, index=False))]
    lines = ["## KV-cache eviction and KV quantization at equal KV memory", ""]
    for task, d in t.groupby("task"):
        col = "kl_mean" if d.curve.all() else "acc_compressed"
        piv = d.pivot_table(index=["family", "kv_saved"], columns="ctx", values=col)
        lines += [f"### {task}: {col} by fraction of KV memory removed", "", piv.reset_index().to_markdown(
            index=False, floatfmt=".4g"), ""]
    if plots:
        files += figures(Path(sweep_dir), t)
    return lines, files
