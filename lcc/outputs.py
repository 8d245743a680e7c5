"""Files ``lcc.reduce`` writes beside the sensitivity tables: the tidy curves file and the LaTeX tables.

``curves.parquet`` / ``curves.csv``: one row per finished job x octave bin, with the job's identity
(job, model, data, compressor, level, ctx), the bin's numbers (names.BIN_KEYS, plus ``position`` =
2^log2_pos) and every key of the job's resolved config, flattened with dots (``compressor.bits``,
``calib.n_samples``, ``seed``...; lists as JSON text), so a notebook can filter and group on anything.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from lcc.io import atomic_write, read_json
from lcc.names import BIN_KEYS

ID_COLS = ["job", "model", "data", "compressor", "level", "ctx"]
#: config keys that do not describe the job's numbers (where it ran, how it was logged)
SKIP_CONFIG = ("output_dir", "logger.", "cache.", "resume")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _cell(v):
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else v


def tidy_curves(sweep_dir: Path, jobs: pd.DataFrame) -> pd.DataFrame:
    """The binned curve of every finished job (``jobs``: collect()'s rows with status ok), with its config."""
    rows = []
    for _, j in jobs.iterrows():
        res = read_json(sweep_dir / j.job / "result.json")
        conf = {k: _cell(v) for k, v in flatten(res.get("config", {})).items() if not k.startswith(SKIP_CONFIG)}
        ident = {c: j[c] for c in ID_COLS}
        for b in res.get("curve", []):
            num = {k: b.get(k) for k in BIN_KEYS}
            lp = num["log2_pos"]
            num["position"] = 2.0 ** lp if lp is not None else None
            rows.append({**ident, **num, **conf})
    df = pd.DataFrame(rows, columns=None if rows else ID_COLS + BIN_KEYS + ["position"])
    for c in df.columns[len(ID_COLS) + len(BIN_KEYS) + 1:]:
        kinds = {type(r[c]) for r in rows if r.get(c) is not None}
        if kinds == {int}:  # an integer key that some jobs lack (compressor.bits): nullable integers
            df[c] = df[c].astype("Int64")
        elif kinds == {bool}:
            df[c] = df[c].astype("boolean")
        elif len(kinds) > 1:  # mixed types across jobs (a number here, text there) -> text
            df[c] = df[c].map(lambda v: None if v is None else str(v))
    df["ctx"] = df["ctx"].astype("int64")
    return df


def write_tidy(sweep_dir: Path, df: pd.DataFrame) -> list[Path]:
    return [atomic_write(sweep_dir / "curves.parquet", lambda tmp: df.to_parquet(tmp, index=False)),
            atomic_write(sweep_dir / "curves.csv", lambda tmp: df.to_csv(tmp, index=False))]


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "Δ": r"$\Delta$", "≥": r"$\geq$", "‖": r"$\|$"}


def tex_escape(s) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(s))


def tex_pm(m, se, digits: int = 3) -> str:
    """``m ± se`` for LaTeX (math-mode ±), ``--`` where the number is undefined or was not run."""
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "--"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{m:.{digits}g}"
    return f"{m:.{digits}g} $\\pm$ {se:.2g}"


def latex_table(jobs: pd.DataFrame, key: str, se: str | None, caption: str, index: list[str],
                ctx_label) -> str:
    """One booktabs table: rows ``index`` (e.g. model, data, compressor, level), columns ctx, cells m ± se."""
    ok = jobs.assign(ctx=jobs.ctx.astype(int))
    ok = ok.assign(cell=[tex_pm(a, b if se else None) for a, b in zip(ok[key], ok[se] if se else ok[key])])
    t = ok.pivot_table(index=index, columns="ctx", values="cell", aggfunc="first").sort_index(axis=1)
    t.columns = [ctx_label(c) for c in t.columns]
    t = t.fillna("--").reset_index()
    for c in index:
        t[c] = t[c].map(tex_escape)
    t.columns = [tex_escape(c) for c in t.columns]
    body = t.to_latex(index=False, escape=False, column_format="l" * len(index) + "r" * (len(t.columns) - len(index)))
    label = "tab:" + key.replace("_", "-")
    return ("\\begin{table}[t]\n\\centering\n\\small\n" + body + f"\\caption{{{tex_escape(caption)}}}\n"
            f"\\label{{{label}}}\n\\end{{table}}\n")


def latex_tables(jobs: pd.DataFrame, shown: list, index: list[str], ctx_label) -> str:
    """Every sensitivity table as LaTeX (booktabs; ``\\usepackage{booktabs}``), ready to ``\\input``."""
    head = ("% lcc sensitivity tables: rows " + ", ".join(index) + "; columns context length; cells mean $\\pm$ SE "
            "across documents; -- = not run or undefined. Needs \\usepackage{booktabs}.\n")
    return head + "\n".join(latex_table(jobs, s.key, s.se, s.label, index, ctx_label) for s in shown)
