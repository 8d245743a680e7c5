"""Files ``lcc.reduce`` writes beside the sensitivity tables: the tidy curves file and the LaTeX tables.

``curves.parquet`` / ``curves.csv``: one row per finished job x octave bin, with the job's identity
(job, model, data, compressor, level, ctx), the bin's numbers (names.BIN_KEYS, plus ``position`` =
2^log2_pos) and every key of the job's resolved config, flattened with dots (``compressor.bits``,
``calib.n_samples``, ``seed``...; lists as JSON text), so a notebook can filter and group on anything.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from lcc.io import atomic_write, read_json
from lcc.names import BIN_KEYS
from lcc.config import VOLATILE_KEYS

ID_COLS = ["job", "model", "data", "compressor", "level", "ctx"]
#: config keys that do not describe the job's numbers (how it was logged, cached, resumed): the keys under
#: lcc.config.VOLATILE_KEYS, the one list the config hash and the job folders' names use too
SKIP_CONFIG = tuple(k for v in VOLATILE_KEYS for k in (v, f"{v}."))


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


def variant_levels(bins: pd.DataFrame) -> dict[str, str]:
    """job -> the label its line carries in the figures: its level, plus any config key whose value differs
    between jobs of the same model, data, compressor, level and ctx (e.g. ``w4g128, seed=1``), so that no
    two jobs draw as one indistinguishable line."""
    ident = ["model", "data", "compressor", "level", "ctx"]
    conf = [c for c in bins.columns[len(ID_COLS) + len(BIN_KEYS) + 1:]]
    jobs = bins.drop_duplicates("job")
    varying = [c for c in conf if (jobs.groupby(ident, dropna=False)[c].nunique(dropna=False) > 1).any()]
    out = {}
    for _, j in jobs.iterrows():
        extra = ", ".join(f"{c}={j[c]}" for c in varying)
        out[j.job] = f"{j.level}, {extra}" if extra else str(j.level)
    return out


def write_tidy(sweep_dir: Path, df: pd.DataFrame) -> list[Path]:
    return [atomic_write(sweep_dir / "curves.parquet", lambda tmp: df.to_parquet(tmp, index=False)),
            atomic_write(sweep_dir / "curves.csv", lambda tmp: df.to_csv(tmp, index=False))]


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "Δ": r"$\Delta$", "≥": r"$\geq$", "‖": r"$\|$", "–": "--"}


def tex_escape(s) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(s))


def tex_cell(cell) -> str:
    """A table cell (``0.326 ± 0.0071``, ``–`` where not run or undefined) as LaTeX."""
    return "--" if str(cell) in ("–", "nan", "") else tex_escape(cell)


def latex_tables(tables: dict[str, pd.DataFrame], labels: dict[str, str] | None = None) -> str:
    """The sensitivity tables (reduce.sensitivity_tables: index = row keys, columns = ctx, cells m ± se) as
    LaTeX booktabs tables, ready to ``\\input`` (needs ``\\usepackage{booktabs}``). ``labels``: table name ->
    \\label suffix."""
    out = ["% lcc sensitivity tables: cells mean $\\pm$ SE across documents; -- = not run or undefined. "
           "Needs \\usepackage{booktabs}."]
    for name, t in tables.items():
        t = t.reset_index()
        index = [c for c in t.columns if c not in set(tables[name].columns)]
        body = pd.DataFrame({tex_escape(c): t[c].map(tex_cell) for c in t.columns})
        tab = body.to_latex(index=False, escape=False, column_format="l" * len(index) + "r" * (t.shape[1] - len(index)))
        label = (labels or {}).get(name) or re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        out.append("\\begin{table}[t]\n\\centering\n\\small\n" + tab + f"\\caption{{{tex_escape(name)}}}\n"
                   f"\\label{{tab:{label}}}\n\\end{{table}}\n")
    return "\n".join(out)
