"""``lcc-dashboard --project P --entity E`` (or ``python -m lcc.dashboard``): a saved W&B report of lcc's runs.

Built with ``wandb-workspaces`` from the names lcc logs (lcc/names.py):
- per context length (one panel grid each, runs of job_type ``job`` with that ``ctx_tokens``, grouped by
  compressor and level): KL vs position, octave-bin means (``bin/kl_mean``) and the per-position curve
  (``curve/kl_mean``), x = token position on a log axis;
- sensitivity: mean KL and late KL slope of every job against ``ctx_tokens``, and the reduce runs' figures;
- the sensitivity tables that the reduce runs (job_type ``reduce``) logged.
The context lengths come from ``--ctx``, from a sweep dir (``--sweep``), or from the project's runs.
``--group`` (or a sweep dir) limits the report to one sweep. Saving needs the W&B API (``wandb login``);
``--dry-run`` builds the report and prints its panels without any network.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lcc.logger import sweep_logger
from lcc.reduce import collect
from lcc.names import (FIG_CURVE, FIG_SENSITIVITY, TABLES, WANDB_BIN, WANDB_CTX, WANDB_CURVE, WANDB_LEVEL, WANDB_X,
                       ctx_label)

GROUP_BY = ["config.compressor.name", f"config.{WANDB_LEVEL}"]


def _filters(job_type: str, ctx: int | None = None, group: str | None = None) -> str:
    parts = [f"JobType = '{job_type}'"]
    if ctx is not None:
        parts.append(f"Config('{WANDB_CTX}') = {int(ctx)}")
    if group:
        parts.append(f"Group = '{group}'")
    return " and ".join(parts)


def build_report(project: str, entity: str, ctx_tokens: list[int], group: str | None = None,
                 title: str | None = None):
    """The report object (nothing is sent anywhere until ``.save()``)."""
    import wandb_workspaces.reports.v2 as wr

    def runset(name: str, job_type: str, ctx: int | None = None, groupby: list[str] | None = None):
        return wr.Runset(entity=entity, project=project, name=name, filters=_filters(job_type, ctx, group),
                         groupby=list(groupby or []))

    scope = f"sweep {group}" if group else f"project {project}"
    blocks = [wr.MarkdownBlock(
        text=f"KL(P_dense ‖ Q) of compressed models against the dense one, per token position, for {scope}. "
             "Each line is one compressor and level (runs grouped by `compressor.name` and `level`); one grid per "
             "context length. `bin/kl_mean` is the octave-bin mean over documents, `curve/kl_mean` the per-position "
             "mean (log-spaced). Definitions: lcc's docs/metrics.md.")]
    for ctx in sorted(set(int(c) for c in ctx_tokens)):
        lab = ctx_label(ctx)
        blocks += [wr.H2(text=f"KL vs position, ctx {lab}"),
                   wr.PanelGrid(runsets=[runset(f"ctx {lab}", "job", ctx, GROUP_BY)], panels=[
                       wr.LinePlot(title=f"KL vs position (octave bins), ctx {lab}", x=WANDB_X,
                                   y=[f"{WANDB_BIN}{FIG_CURVE.key}"], log_x=True, log_y=True,
                                   title_x="position (tokens)", title_y="KL [nats/token]",
                                   groupby_aggfunc="mean", groupby_rangefunc="stderr",
                                   layout=wr.Layout(x=0, y=0, w=12, h=8)),
                       wr.LinePlot(title=f"KL per position (log-spaced means), ctx {lab}", x=WANDB_X,
                                   y=[f"{WANDB_CURVE}{FIG_CURVE.key}"], log_x=True, log_y=True,
                                   title_x="position (tokens)", title_y="KL [nats/token]",
                                   groupby_aggfunc="mean", groupby_rangefunc="stderr",
                                   layout=wr.Layout(x=12, y=0, w=12, h=8))])]
    blocks += [wr.H2(text="Sensitivity to context length"),
               wr.PanelGrid(runsets=[runset("jobs", "job")], panels=[
                   wr.ScatterPlot(title="mean KL vs ctx", x=wr.Config(WANDB_CTX),
                                  y=wr.SummaryMetric(FIG_SENSITIVITY[0].key), log_x=True,
                                  layout=wr.Layout(x=0, y=0, w=12, h=8)),
                   wr.ScatterPlot(title="late KL slope (positions >= 512) vs ctx", x=wr.Config(WANDB_CTX),
                                  y=wr.SummaryMetric(FIG_SENSITIVITY[1].key), log_x=True,
                                  layout=wr.Layout(x=12, y=0, w=12, h=8))]),
               wr.H2(text="Sensitivity tables and figures (reduce runs)"),
               wr.PanelGrid(runsets=[runset("reduce", "reduce")], panels=[
                   wr.WeavePanelSummaryTable(table_name=f"table/{TABLES[0].slug}",
                                             layout=wr.Layout(x=0, y=0, w=24, h=8)),
                   wr.WeavePanelSummaryTable(table_name=f"table/{TABLES[2].slug}",
                                             layout=wr.Layout(x=0, y=8, w=24, h=8)),
                   wr.MediaBrowser(title="figures", media_keys=["figure/kl_vs_position", "figure/sensitivity"],
                                   num_columns=1, layout=wr.Layout(x=0, y=16, w=24, h=12))])]
    return wr.Report(project=project, entity=entity, title=title or f"lcc: KL vs context ({scope})",
                     description="Long-context compression sensitivity (lcc)", blocks=blocks, width="fluid")


def sweep_scope(sweep_dir: Path) -> tuple[list[int], str]:
    """Context lengths and W&B group of a sweep dir (from its result files, as lcc.reduce reads them)."""
    if not sweep_dir.is_dir():
        raise SystemExit(f"lcc.dashboard: --sweep {sweep_dir}: no such folder" if not sweep_dir.exists()
                         else f"lcc.dashboard: --sweep {sweep_dir} is a file, not a sweep folder")
    df = collect(sweep_dir)
    ok = df[df.status == "ok"]
    if ok.empty:
        raise SystemExit(f"lcc.dashboard: no finished job under {sweep_dir}")
    lg = sweep_logger(sweep_dir, ok, {}) or {}
    return sorted({int(c) for c in ok.ctx}), lg.get("group") or sweep_dir.name


def project_ctx(project: str, entity: str, group: str | None) -> list[int]:
    import wandb

    filters = {"jobType": "job", **({"group": group} if group else {})}
    runs = wandb.Api().runs(f"{entity}/{project}", filters=filters)
    return sorted({int(r.config[WANDB_CTX]) for r in runs if WANDB_CTX in r.config})


def parse_ctx(s: str) -> list[int]:
    out = []
    for part in s.split(","):
        part = part.strip().lower()
        try:
            n = int(part[:-1]) * 1024 if part.endswith("k") else int(part)
        except ValueError:
            n = 0
        if n < 1:
            raise SystemExit(f"lcc.dashboard: --ctx {s!r}: {part!r} is not a context length; valid: positive "
                             f"lengths, e.g. 1k,2k,8192")
        out.append(n)
    return out


def describe(report) -> str:
    lines = [f"report {report.title!r} for {report.entity}/{report.project}:"]
    for b in report.blocks:
        if type(b).__name__ == "PanelGrid":
            rs = "; ".join(f"{r.name}: {r.filters} groupby {r.groupby}" for r in b.runsets)
            lines.append(f"  grid [{rs}]")
            for p in b.panels:
                what = getattr(p, "y", None) or getattr(p, "table_name", None) or getattr(p, "media_keys", None)
                lines.append(f"    {type(p).__name__}: {getattr(p, 'title', None) or ''} {what}")
        elif hasattr(b, "text") and isinstance(b.text, str) and type(b).__name__.startswith("H"):
            lines.append(f"  {b.text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lcc-dashboard", description=__doc__.split("\n")[0].replace("``", ""))
    ap.add_argument("--project", required=True, help="W&B project of the runs (lcc's logger.project, default lcc)")
    ap.add_argument("--entity", required=True, help="W&B entity (user or team) that owns the project")
    ap.add_argument("--sweep", type=Path, help="a sweep dir: its context lengths and W&B group")
    ap.add_argument("--group", help="only the runs of this W&B group (a sweep)")
    ap.add_argument("--ctx", help="context lengths, e.g. 1k,2k,4k (default: from --sweep or the project's runs)")
    ap.add_argument("--title", help="report title")
    ap.add_argument("--dry-run", action="store_true", help="build the report and print its panels; save nothing")
    args = ap.parse_args(argv)
    group = args.group
    ctx = parse_ctx(args.ctx) if args.ctx else None
    if args.sweep is not None:
        sctx, sgroup = sweep_scope(args.sweep)
        ctx = ctx or sctx
        group = group or sgroup
    if ctx is None:
        if args.dry_run:
            ap.error("--dry-run needs --ctx or --sweep (the project's runs are only read online)")
        ctx = project_ctx(args.project, args.entity, group)
        if not ctx:
            raise SystemExit(f"lcc.dashboard: no lcc job runs in {args.entity}/{args.project}"
                             + (f" group {group}" if group else "") + "; sync them first (README: W&B)")
    report = build_report(args.project, args.entity, ctx, group, args.title)
    print(describe(report))
    if args.dry_run:
        return 0
    report.save()
    print(f"saved: {report.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
