"""``python -m lcc.reduce <sweep_dir>`` (or ``lcc-reduce``): join every job's files into sensitivity tables,
a tidy curves file and figures; with ``--wandb``, also a W&B reduce run.

Reads files only (``lcc_jobs.json``, ``*/result.json``). Writes into the sweep dir:
``sensitivity.csv`` (one row per finished job, all summary numbers), ``sensitivity.md`` and
``sensitivity.tex`` (KL ± SE, slopes ± SE, top-1 agreement, ΔNLL; rows model x data x compressor x level,
columns ctx; the .md also lists failed/missing jobs), ``curves.parquet`` / ``curves.csv`` (one row per job x
octave bin, with the job's config keys) and ``plots/kl_vs_position.{png,pdf}`` and
``plots/sensitivity.{png,pdf}`` (lcc/figures.py).

No job hides: rows also carry every config key that differs between finished jobs of one cell
(``varying_keys``); a job whose files fail the checksums in its result.json is listed as ``corrupt``, a
result.json that is not what lcc writes as ``malformed``; a malformed ``lcc_jobs.json`` stops reduce with a
message naming it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import pandas as pd

from lcc import figures, tasks
from lcc.coverage import short as coverage_cell
from lcc.io import atomic_write, files_problem, read_json
from lcc.logger import log_reduce, sweep_logger, wandb_defaults
from lcc.names import SUMMARY_COLS, TABLES, ctx_label
from lcc.outputs import latex_tables, tidy_curves, variant_levels, write_tidy
from lcc.press_report import report as press_report
from lcc.result_schema import problem as result_problem
from lcc.config import VOLATILE_KEYS

log = logging.getLogger(__name__)


class SweepFilesError(Exception):
    """A sweep's files cannot be read as lcc wrote them (e.g. a malformed ``lcc_jobs.json``)."""


#: table rows before the keys that vary between jobs (``varying_keys``); the columns are ``ctx``
BASE_INDEX = ["model", "data", "compressor", "level"]


def read_manifest(path: Path) -> list[dict]:
    """The jobs of ``lcc_jobs.json``; SweepFilesError naming the file if it is not what the sweeper writes."""
    try:
        man = read_json(path)
    except (OSError, ValueError) as e:
        raise SweepFilesError(f"{path} is unreadable ({type(e).__name__}: {e}); fix or delete it (without it, jobs "
                              f"that never wrote a result.json are not listed as missing)") from e
    jobs = man.get("jobs") if isinstance(man, dict) else None
    ok = isinstance(jobs, list) and all(
        isinstance(j, dict) and isinstance(j.get("dir"), str) and isinstance(j.get("overrides"), list)
        for j in jobs)
    if not ok:
        raise SweepFilesError(f"{path} is malformed: expected {{\"jobs\": [{{\"dir\": str, \"overrides\": [...]}}, "
                              f"...]}}; fix or delete it (without it, jobs that never wrote a result.json are not "
                              f"listed as missing)")
    return jobs


def flat_config(cfg: dict, prefix: str = "") -> dict:
    """``{"calib.n_samples": 128, ...}`` of a resolved job config, without the volatile keys."""
    out = {}
    for k, v in cfg.items():
        if not prefix and k in (*VOLATILE_KEYS, "hydra"):
            continue
        if isinstance(v, dict) and v:
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def collect(sweep_dir: Path) -> pd.DataFrame:
    """One row per job: every job of the manifest (missing ones too) and every result.json found. A result
    whose files fail their recorded checksums is ``corrupt`` (``unverified`` if it records none), one that is
    not what lcc writes is ``malformed``: neither enters a table, both are listed with the reason."""
    rows: dict[str, dict] = {}
    manifest = sweep_dir / "lcc_jobs.json"
    if manifest.exists():
        for j in read_manifest(manifest):
            rows[j["dir"]] = {"job": j["dir"], "status": "missing", "overrides": " ".join(map(str, j["overrides"]))}
    for path in sorted(sweep_dir.rglob("result.json")):
        job = str(path.parent.relative_to(sweep_dir))
        row = rows.setdefault(job, {"job": job, "overrides": ""})
        try:
            res = read_json(path)
        except (OSError, ValueError) as e:
            row.update(status="unreadable", error=f"{path}: {e}")
            continue
        if (why := result_problem(res)):
            row.update(status="malformed", error=f"{path}: {why}")
            continue
        row["status"] = res.get("status", "unknown")
        if res.get("error"):
            row["error"] = res["error"]
        if row["status"] == "ok" and (why := files_problem(path.parent, res)):
            row.update(status="unverified" if "no checksums" in why else "corrupt", error=f"{path.parent}: {why}")
            continue
        cfg = res.get("config") if isinstance(res.get("config"), dict) else {}
        row.update(model=res.get("model", cfg.get("model", {}).get("name")),
                   data=res.get("data", cfg.get("data", {}).get("name")),
                   compressor=res.get("compressor", cfg.get("compressor", {}).get("name")),
                   level=res.get("level"), ctx=res.get("ctx", cfg.get("ctx", {}).get("tokens")),
                   config=flat_config(cfg), task=tasks.task_of(res),
                   has_curve=isinstance(res.get("curve"), list))
        summary = res.get("summary") if isinstance(res.get("summary"), dict) else {}
        row.update({k: summary.get(k) for k in SUMMARY_COLS})
        timings = res.get("timings") if isinstance(res.get("timings"), dict) else {}
        row.update({f"time_{k}": v for k, v in timings.items()})
        weights = res.get("weights") if isinstance(res.get("weights"), dict) else {}
        row["coverage"] = coverage_cell(weights.get("coverage"))  # changed share per module kind (lcc/coverage.py)
    if not rows:
        return pd.DataFrame(columns=["job", "status"])
    return pd.DataFrame(list(rows.values()))


def _cell(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def varying_keys(ok: pd.DataFrame) -> list[str]:
    """Config keys (dotted, volatile ones left out) whose values differ between finished jobs that would
    otherwise share a table cell (same model, data, compressor, level and ctx), e.g. ``calib.n_samples``,
    ``seed``, ``data.paths``. They become index columns, so that no job hides behind another."""
    if ok.empty or "config" not in ok:
        return []
    keys: set[str] = set()
    for _, g in ok.groupby(BASE_INDEX + ["ctx"], dropna=False):
        if len(g) < 2:
            continue
        confs = list(g["config"])
        for k in set().union(*confs):
            if len({_cell(c.get(k)) for c in confs}) > 1:
                keys.add(k)
    return sorted(keys)


def table_rows(ok: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``(ok with one column per varying key, index columns)``: BASE_INDEX, the varying keys, and ``job`` if
    two jobs still share a cell (identical configs in two folders)."""
    keys = varying_keys(ok)
    ok = ok.copy()
    for k in keys:
        ok[k] = [_cell(c.get(k)) for c in ok["config"]]
    index = BASE_INDEX + keys
    if ok.duplicated(index + ["ctx"]).any():
        index.append("job")
    if keys:
        log.warning("jobs differ in keys that are not table axes: %s (added as table columns)", ", ".join(keys))
    return ok, index


def pm(m: float, se: float, digits: int = 3) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{m:.{digits}g}"
    return f"{m:.{digits}g} ± {se:.2g}"


def _has_curve(df: pd.DataFrame) -> pd.Series:
    """Jobs whose results carry a per-position ``curve``: the sensitivity tables, tidy curves and figures;
    every task reports its other jobs itself (``Task.reporter``)."""
    return df.has_curve.fillna(False).astype(bool) if "has_curve" in df else pd.Series(False, index=df.index)


def task_reports(sweep_dir: Path, df: pd.DataFrame, plots: bool) -> tuple[list[str], list[Path]]:
    """Each task's own report of its finished jobs (``Task.reporter``; tasks that share a reporter, e.g. the
    synthetic ones, are reported together)."""
    lines: list[str] = []
    files: list[Path] = []
    done = df[df.status == "ok"]
    by_reporter: dict = {}
    for name in (done.task.dropna().unique() if "task" in done else []):
        if name in tasks.REGISTRY and (fn := tasks.REGISTRY[name].reporter) is not None:
            by_reporter.setdefault(fn, []).append(name)
    for fn, names in by_reporter.items():
        more_lines, more_files = fn(sweep_dir, done[done.task.isin(names)], plots)
        lines += more_lines
        files += more_files
    return lines, files


def sensitivity_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Pivot tables of finished jobs: rows (model, data, compressor, level, and every config key that differs
    between jobs of one cell: ``table_rows``), columns ctx. Every finished job has its own cell."""
    ok = df[(df.status == "ok") & _has_curve(df)].copy()
    if ok.empty:
        return {}
    ok["ctx"] = ok["ctx"].astype(int)
    ok, index = table_rows(ok.sort_values("ctx"))
    out = {}
    for name, m, se in [(t.label, t.key, t.se) for t in TABLES]:
        ok["cell"] = [pm(a, b) for a, b in zip(ok[m], ok[se])]
        t = ok.pivot_table(index=index, columns="ctx", values="cell", aggfunc="first")
        t.columns = [ctx_label(c) for c in t.columns]
        out[name] = t.fillna("–")  # a combination that was not run (or did not finish) at this ctx
    return out


def status_line(df: pd.DataFrame) -> str:
    counts = df.status.value_counts().to_dict() if len(df) else {}
    parts = [f"{counts.pop(s, 0)} {s}" for s in ("ok", "failed", "missing")]  # then corrupt, malformed, ...
    parts += [f"{n} {s}" for s, n in counts.items()]
    return f"{len(df)} jobs: " + ", ".join(parts)


def write_outputs(sweep_dir: Path, df: pd.DataFrame, tables: dict[str, pd.DataFrame],
                  plots: bool = True) -> list[Path]:
    """The files beside sensitivity.csv/.md: the LaTeX tables, the tidy curves file, the figures."""
    ok = df[(df.status == "ok") & _has_curve(df)]  # the other jobs: their task's reporter
    if ok.empty:
        return []
    labels = {t.label: t.slug for t in TABLES}
    written = [atomic_write(sweep_dir / "sensitivity.tex",
                            lambda tmp: Path(tmp).write_text(latex_tables(tables, labels)))]
    bins = tidy_curves(sweep_dir, ok)
    written += write_tidy(sweep_dir, bins)
    if plots:
        lines = variant_levels(bins)  # a figure line per job: level (+ any key that tells jobs apart)
        bins = bins.assign(level=bins.job.map(lines))
        ok = ok.assign(level=ok.job.map(lines))
        (sweep_dir / "plots").mkdir(exist_ok=True)
        written += figures.kl_vs_position(bins, ok, sweep_dir / "plots" / "kl_vs_position")
        written += figures.sensitivity(ok, sweep_dir / "plots" / "sensitivity")
    return written


def reduce(sweep_dir: str | Path, plots: bool = True, wandb: bool | str = False,
           wandb_overrides: dict | None = None) -> tuple[pd.DataFrame, str]:
    """Tables, tidy curves and figures of a sweep dir. ``wandb``: True logs a W&B reduce run; ``"auto"``
    logs one when the sweep's jobs logged to W&B (their ``logger.kind``), as at the end of a sweep."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SystemExit(f"lcc.reduce: {sweep_dir} is not a directory")
    df = collect(sweep_dir)
    if df.empty:
        raise SystemExit(f"lcc.reduce: no jobs found under {sweep_dir} (no lcc_jobs.json, no */result.json)")
    lines = [f"# Sensitivity: {sweep_dir}", "", status_line(df), ""]
    ok = df[(df.status == "ok") & _has_curve(df)]  # the other jobs: their task's reporter (task_reports)
    if (keys := varying_keys(ok)):
        lines += [f"Jobs differ in keys that are not table axes: {', '.join(keys)}; they are table columns.", ""]
    tables = sensitivity_tables(df)
    for name, t in tables.items():
        lines += [f"## {name}", "", t.reset_index().to_markdown(index=False), ""]
    done = df[df.status == "ok"]
    if "coverage" in done and done.coverage.fillna("").astype(bool).any():  # what each level compressed
        cov = done[["model", "compressor", "level", "coverage"]].fillna("").drop_duplicates()
        lines += ["## Coverage (share of each kind's parameters changed)", "", cov.to_markdown(index=False), ""]
    task_lines, task_files = task_reports(sweep_dir, df, plots)
    lines += task_lines
    press_lines, press_files = press_report(sweep_dir, df, plots)  # KV eviction beside KV quantization (if any)
    lines += press_lines
    task_files += press_files
    bad = df[df.status != "ok"]
    if len(bad):
        lines += ["## Jobs without a result", ""]
        cols = [c for c in ("job", "status", "overrides", "error") if c in bad]
        lines += [bad[cols].fillna("").to_markdown(index=False), ""]
    text = "\n".join(lines)
    ok_rows = table_rows(ok)[0] if len(ok) else ok
    cols = [c for c in ["job", "model", "data", "compressor", "level", *keys, "ctx"] + SUMMARY_COLS + ["coverage"]
            if c in ok_rows]
    atomic_write(sweep_dir / "sensitivity.csv", lambda tmp: ok_rows[cols].to_csv(tmp, index=False))
    atomic_write(sweep_dir / "sensitivity.md", lambda tmp: Path(tmp).write_text(text + "\n"))
    files = [sweep_dir / "sensitivity.csv", sweep_dir / "sensitivity.md"]
    files += write_outputs(sweep_dir, df, tables, plots=plots) + task_files
    if wandb:
        lg = sweep_logger(sweep_dir, ok, wandb_overrides or {})
        if lg is None and wandb is True:  # forced, though no job logged to W&B: lcc's logger defaults
            lg = {**wandb_defaults(), "kind": "wandb"}
        if lg is not None:
            log_reduce(sweep_dir, lg, df, tables, files)
    return df, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lcc-reduce", description=__doc__.split("\n")[0].replace("``", ""))
    ap.add_argument("sweep_dir", help="a sweep directory, e.g. multirun/2026-11-23_10-00-00")
    ap.add_argument("--no-plots", action="store_true", help="tables and the tidy file only, no figures")
    ap.add_argument("--wandb", action="store_true",
                    help="also log a W&B reduce run (job_type=reduce) into the sweep's group: tables, figures, "
                         "files as an artifact; project/entity/mode/group from the jobs' logger config")
    ap.add_argument("--wandb-mode", choices=["offline", "online"], help="override the jobs' logger.mode")
    ap.add_argument("--wandb-project", help="override the jobs' logger.project")
    ap.add_argument("--wandb-entity", help="override the jobs' logger.entity")
    args = ap.parse_args(argv)
    over = {k: v for k, v in (("mode", args.wandb_mode), ("project", args.wandb_project),
                              ("entity", args.wandb_entity)) if v is not None}
    if over and not args.wandb:
        ap.error("--wandb-mode/--wandb-project/--wandb-entity need --wandb")
    try:
        df, text = reduce(args.sweep_dir, plots=not args.no_plots, wandb=args.wandb, wandb_overrides=over)
    except SweepFilesError as e:
        print(f"lcc.reduce: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0 if (df.status == "ok").all() else 1


if __name__ == "__main__":
    sys.exit(main())
