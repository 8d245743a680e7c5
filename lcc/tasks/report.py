"""Task results in ``lcc.reduce``: tables and the needle-in-a-haystack heatmaps, from result.json files only.

``report(sweep_dir, jobs)`` is the ``reporter`` of the synthetic tasks and of lm_eval: ``lcc.reduce`` calls it
with the rows of their finished jobs; it returns the markdown
sections and writes ``tasks.csv`` (one row per finished task job), ``tasks_by_depth.csv`` and
``plots/<task>_depth_ctx.png`` (accuracy per depth x ctx: one panel for the dense model and one per compressor
and level). The metrics and their labels come from the registry (``lcc.metrics.registry``, families
``synthetic`` and ``lm_eval``) through ``lcc.names``.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lcc.io import atomic_write, read_json
from lcc.names import TASK_HEATMAP, TASK_TABLES, ctx_label

ROW = ["model", "data", "task", "compressor", "level"]


def _fmt(m, se=None, digits: int = 3) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{m:.{digits}g}"
    return f"{m:.{digits}g} ± {se:.2g}"


def load(sweep_dir: Path, jobs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(one row per synthetic-task job, one row per job and depth, one row per lm-eval job and metric)."""
    per_job, per_depth, lm = [], [], []
    ok = jobs[jobs.status == "ok"]
    for _, r in ok.iterrows():
        res = read_json(sweep_dir / r.job / "result.json")
        base = {"job": r.job, "model": res.get("model"), "data": res.get("data"), "task": res.get("task"),
                "compressor": res.get("compressor"), "level": res.get("level"), "ctx": int(res.get("ctx"))}
        if res.get("lm_eval"):
            lm += [{**base, **row} for row in res["lm_eval"]]
            # RULER through lm-eval: its per-length score is an accuracy, tabulated beside passkey / niah
            per_job += [{**base, "task": r["task"], **{k: v for k, v in r.items() if k not in ("task", "length")}}
                        for r in res.get("ruler", []) if r.get("length") == base["ctx"]]
            continue
        per_job.append({**base, **res["summary"]})
        per_depth += [{**base, **d} for d in res.get("by_depth", [])]
    return pd.DataFrame(per_job), pd.DataFrame(per_depth), pd.DataFrame(lm)


def tables(per_job: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per table metric: rows model x data x task x compressor x level, columns ctx."""
    out = {}
    if per_job.empty:
        return out
    df = per_job.sort_values("ctx")
    for m in TASK_TABLES:
        if m.key not in df:
            continue
        se = df[m.se] if m.se in df else [None] * len(df)
        df = df.assign(cell=[_fmt(a, b) for a, b in zip(df[m.key], se)])
        t = df.pivot_table(index=ROW, columns="ctx", values="cell", aggfunc="first")
        t.columns = [ctx_label(c) for c in t.columns]
        out[m.label] = t.fillna("–")
    # the heatmap metric (accuracy): dense beside compressed for every ctx
    cells = []
    for _, r in df.iterrows():
        cells.append({**{k: r[k] for k in ROW}, "ctx": r.ctx, **{
            panel: _fmt(r.get(key), None, 2) for panel, key in TASK_HEATMAP.items()}})
    c = pd.DataFrame(cells).pivot_table(index=ROW, columns="ctx", values=["dense", "compressed"], aggfunc="first")
    c = c.reorder_levels([1, 0], axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    c.columns = [f"{ctx_label(ctx)} {which}" for ctx, which in c.columns]
    out = {"accuracy, dense beside compressed (n prompts per cell: see tasks.csv)": c.fillna("–"), **out}
    return out


def lm_eval_table(lm: pd.DataFrame) -> pd.DataFrame:
    cols = ["model", "task", "compressor", "level", "ctx", "lm_task", "metric"]
    t = lm.copy()
    t["dense"] = [_fmt(a, b) for a, b in zip(t.dense, t.dense_se)]
    t["compressed"] = [_fmt(a, b) for a, b in zip(t.compressed, t.compressed_se)]
    t["delta"] = [_fmt(a) for a in t.delta]
    return t[cols + ["dense", "compressed", "delta", "matching"]].sort_values(cols)


def heatmaps(sweep_dir: Path, per_depth: pd.DataFrame) -> list[Path]:
    """One figure per (model, data, task): accuracy per depth (rows) x ctx (columns); a panel for the dense
    model, then one per compressor and level."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if per_depth.empty:
        return written
    (sweep_dir / "plots").mkdir(exist_ok=True)
    for (model, data, task), g in per_depth.groupby(["model", "data", "task"]):
        ctxs = sorted(g.ctx.unique())
        depths = sorted(g.depth.unique())
        panels = [("dense", g, TASK_HEATMAP["dense"])]
        for (comp, level), gc in g.groupby(["compressor", "level"]):
            if comp != "none":
                panels.append((f"{comp}\n{level}", gc, TASK_HEATMAP["compressed"]))
        ncol = min(3, len(panels))
        nrow = math.ceil(len(panels) / ncol)
        w = max(2.4, 0.75 * len(ctxs) + 1.3)
        fig, axes = plt.subplots(nrow, ncol, figsize=(w * ncol + 1.2, (0.42 * len(depths) + 1.7) * nrow),
                                 squeeze=False)
        im = None
        for k, (ax, (title, gp, col)) in enumerate(zip(axes.flat, panels)):
            grid = (gp.groupby(["depth", "ctx"])[col].mean().unstack("ctx")
                    .reindex(index=depths, columns=ctxs))
            n = gp.groupby(["depth", "ctx"])["n_prompts"].first().unstack("ctx").reindex(index=depths, columns=ctxs)
            im = ax.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            for i in range(len(depths)):
                for j in range(len(ctxs)):
                    v = grid.iat[i, j]
                    if not pd.isna(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(ctxs)), [ctx_label(int(c)) for c in ctxs], fontsize=8)
            ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=8)
            ax.set_title(title, fontsize=9)
            per_ctx = [n[c].dropna() for c in ctxs]
            ax.set_xlabel("context (prompts per cell: " + "/".join(
                str(int(x.iloc[0])) if len(x) else "-" for x in per_ctx) + ")", fontsize=7)
            if k % ncol == 0:
                ax.set_ylabel("needle depth", fontsize=8)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle(f"{task}: greedy accuracy by needle depth and context ({model}, {data})", fontsize=10)
        fig.tight_layout()
        if im is not None:
            fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy")
        path = sweep_dir / "plots" / f"{task}_depth_ctx.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        written.append(path)
    return written


def report(sweep_dir: Path, jobs: pd.DataFrame, plots: bool = True) -> tuple[list[str], list[Path]]:
    """Markdown lines for the task jobs of a sweep (they go into sensitivity.md) and the files written:
    tasks.csv, tasks_by_depth.csv, lm_eval.csv and the heatmaps."""
    per_job, per_depth, lm = load(sweep_dir, jobs)
    lines: list[str] = []
    files: list[Path] = []
    if not per_job.empty:
        files.append(atomic_write(sweep_dir / "tasks.csv", lambda tmp: per_job.to_csv(tmp, index=False)))
        files.append(atomic_write(sweep_dir / "tasks_by_depth.csv", lambda tmp: per_depth.to_csv(tmp, index=False)))
        for name, t in tables(per_job).items():
            lines += [f"## Tasks: {name}", "", t.reset_index().to_markdown(index=False), ""]
        if plots:
            for p in heatmaps(sweep_dir, per_depth):
                lines += [f"Heatmap: {p.relative_to(sweep_dir)}", ""]
                files.append(p)
    if not lm.empty:
        files.append(atomic_write(sweep_dir / "lm_eval.csv", lambda tmp: lm.to_csv(tmp, index=False)))
        lines += ["## lm-eval tasks: dense and compressed (LLM-KICK 'matching': within match_within of dense)", "",
                  lm_eval_table(lm).to_markdown(index=False), ""]
    return lines, files
