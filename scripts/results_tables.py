#!/usr/bin/env python3
"""The markdown of docs/results.md's "Retrieval beside KL" from reduce's files (no hand copying).

    python scripts/results_tables.py <tasks sweep dir> <kl sweep dir> [-o tables.md]

Reads ``tasks.csv`` of the task sweep and ``sensitivity.csv`` of the KL sweep (both written by
``python -m lcc.reduce``; the two may be the same folder) and prints:

* greedy accuracy ± binomial SE per task x compressor x level (rows, dense first, then by mean KL) and ctx
  (columns, with the prompts per cell), the mean KL on text at the same ctx in brackets;
* the dense model's accuracy ± SE per task and ctx;
* Spearman's rho between the compressors' accuracy and their -mean KL (and -answer KL) per task and ctx: 1 when
  both rank the compressors the same way.

Metric keys and labels come from the metric registry (lcc.metrics.registry), like reduce's own tables.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcc.metrics import registry  # noqa: E402
from lcc.names import TASK_HEATMAP, ctx_label  # noqa: E402

KL = registry.metric("kl_mean")
KL_ANSWER = registry.metric("kl_answer", "synthetic")
ACC_D = registry.metric(TASK_HEATMAP["dense"], "synthetic")
ACC_C = registry.metric(TASK_HEATMAP["compressed"], "synthetic")
KEY = ["model", "compressor", "level", "ctx"]


def _acc(v, se) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if se is None or (isinstance(se, float) and math.isnan(se)) or v in (0.0, 1.0):
        return f"{v:.2f}"
    return f"{v:.2f} ± {se:.2f}"


def load(tasks_dir: Path, kl_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    for f in (tasks_dir / "tasks.csv", kl_dir / "sensitivity.csv"):
        if not f.exists():
            raise SystemExit(f"{f} does not exist: run python -m lcc.reduce {f.parent} first")
    tasks = pd.read_csv(tasks_dir / "tasks.csv")
    kl = pd.read_csv(kl_dir / "sensitivity.csv")
    if "task" in kl:
        kl = kl[kl.task.fillna("kl") == "kl"]
    kl = kl.dropna(subset=[KL.name])[KEY + [KL.name]].drop_duplicates(KEY)
    return tasks, kl


def accuracy_table(tasks: pd.DataFrame, kl: pd.DataFrame) -> list[str]:
    df = tasks.merge(kl, on=KEY, how="left")
    ctxs = sorted(df.ctx.unique())
    n = {c: sorted(df[df.ctx == c][registry.metric("n_prompts", "synthetic").name].unique()) for c in ctxs}
    head = [f"{ctx_label(c)} (n={'/'.join(str(int(x)) for x in n[c])})" for c in ctxs]
    lines = ["| task | compressor | level | " + " | ".join(head) + " |",
             "|---|---|---|" + "---:|" * len(ctxs)]
    for task, g in df.groupby("task", sort=True):
        dense = g.groupby("ctx")[[ACC_D.name, ACC_D.se]].first()
        cells = [_acc(*dense.loc[c]) if c in dense.index else "–" for c in ctxs]
        lines.append(f"| {task} | dense | – | " + " | ".join(cells) + " |")
        order = g.groupby(["compressor", "level"])[KL.name].mean().sort_values(na_position="last").index
        for comp, level in order:
            r = g[(g.compressor == comp) & (g.level == level)].set_index("ctx")
            cells = []
            for c in ctxs:
                if c not in r.index:
                    cells.append("–")
                    continue
                x = r.loc[c]
                k = "" if pd.isna(x[KL.name]) else f" ({x[KL.name]:.2f})"
                cells.append(_acc(x[ACC_C.name], x[ACC_C.se]) + k)
            lines.append(f"| {task} | {comp} | {level} | " + " | ".join(cells) + " |")
    return lines


def dense_line(tasks: pd.DataFrame) -> list[str]:
    out = []
    for task, g in tasks.groupby("task", sort=True):
        d = g.groupby("ctx")[[ACC_D.name, ACC_D.se]].first().sort_index()
        out.append(f"- {task}, dense: " + ", ".join(
            f"{ctx_label(c)} {v:.2f} ± {se:.2f}" for c, (v, se) in d.iterrows()))
    return out


def ranking(tasks: pd.DataFrame, kl: pd.DataFrame) -> list[str]:
    df = tasks.merge(kl, on=KEY, how="left")
    ctxs = sorted(df.ctx.unique())
    lines = ["| task | rank correlation | " + " | ".join(ctx_label(c) for c in ctxs) + " |",
             "|---|---|" + "---:|" * len(ctxs)]
    for task, g in df.groupby("task", sort=True):
        for label, col in ((f"rho(accuracy, -{KL.name})", KL.name), (f"rho(accuracy, -{KL_ANSWER.name})",
                                                                      KL_ANSWER.name)):
            cells = []
            for c in ctxs:
                x = g[g.ctx == c][[ACC_C.name, col]].dropna()
                # Spearman = Pearson on average ranks (pandas' method="spearman" needs scipy)
                rho = x[ACC_C.name].rank().corr((-x[col]).rank()) if len(x) >= 3 else float("nan")
                cells.append("–" if pd.isna(rho) else f"{rho:.2f}")
            lines.append(f"| {task} | {label} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tasks_dir", type=Path)
    p.add_argument("kl_dir", type=Path)
    p.add_argument("-o", "--out", type=Path, default=None, help="also write the markdown here")
    a = p.parse_args(argv)
    tasks, kl = load(a.tasks_dir, a.kl_dir)
    md = ["Greedy accuracy (± binomial SE) and, in brackets, the mean KL on text at the same ctx:", "",
          *accuracy_table(tasks, kl), "", "Dense accuracy ± SE:", "", *dense_line(tasks), "",
          "Do accuracy and KL rank the compressors the same way (Spearman, over the compressed models)?", "",
          *ranking(tasks, kl), ""]
    text = "\n".join(md)
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
