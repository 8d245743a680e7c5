"""What a sweep leaves where researchers look: the reduce's files (tidy curves, LaTeX, figures) and the W&B
runs, read back from the offline run files through wandb's own record format (tests/wandb_records.py).

One real sweep (tiny model, quant + magnitude x 1k + 2k, logger=wandb offline) through the CLI serves the module.
"""
import json
import math
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lcc.io import read_json
from tests.helpers import run_cli
from tests.wandb_records import OfflineRun, offline_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("results") / "sw"
    p = run_cli("-m", "model=tiny", "logger=wandb", "n_docs=2", "compressor=quant,magnitude", "ctx=1k,2k",
                f"hydra.sweep.dir={d}")
    assert p.returncode == 0, p.stderr[-3000:]
    return d, p


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/result.json"))


def test_the_sweep_ends_with_its_status_line_and_reduce(sweep):
    d, p = sweep
    assert f"lcc sweep {d}: 4 jobs: 4 ok, 0 failed, 0 missing" in p.stderr
    for f in ["sensitivity.csv", "sensitivity.md", "sensitivity.tex", "curves.parquet", "curves.csv",
              "plots/kl_vs_position.png", "plots/kl_vs_position.pdf", "plots/sensitivity.png", "plots/sensitivity.pdf"]:
        assert (d / f).stat().st_size > 500, f
    assert (d / "plots" / "sensitivity.pdf").read_bytes()[:5] == b"%PDF-"
    assert (d / "plots" / "kl_vs_position.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((d / "plots").glob("compressor=*"))  # one figure per sweep, not one per job


def test_tidy_file_has_every_job_by_bin_with_its_config(sweep):
    d, _ = sweep
    tidy = pd.read_parquet(d / "curves.parquet")
    csv = pd.read_csv(d / "curves.csv")
    assert tidy.shape == csv.shape and list(tidy.columns) == list(csv.columns)
    n_rows = 0
    for jd in job_dirs(d):
        res = read_json(jd / "result.json")
        rows = tidy[tidy.job == jd.name].sort_values("bin_lo")
        assert len(rows) == len(res["curve"]) > 0
        n_rows += len(rows)
        for (_, r), b in zip(rows.iterrows(), res["curve"]):
            assert (r.bin_lo, r.bin_hi) == (b["bin_lo"], b["bin_hi"])
            assert r.kl_mean == b["kl_mean"] and r.kl_se == b["kl_se"] and r.top1_agree == b["top1_agree"]
            assert r.position == pytest.approx(2 ** b["log2_pos"])
        conf = res["config"]
        assert set(rows["ctx.tokens"]) == {conf["ctx"]["tokens"]} and set(rows.ctx) == {res["ctx"]}
        assert set(rows["calib.n_samples"]) == {conf["calib"]["n_samples"]} and set(rows.seed) == {conf["seed"]}
    assert len(tidy) == n_rows
    quant, mag = tidy[tidy.compressor == "quant"], tidy[tidy.compressor == "magnitude"]
    assert (quant["compressor.bits"] == 4).all() and mag["compressor.bits"].isna().all()
    assert (mag["compressor.sparsity"] == 0.5).all() and quant["compressor.sparsity"].isna().all()
    assert not [c for c in tidy.columns if c.startswith(("logger.", "cache.")) or c == "output_dir"]


def test_latex_tables_hold_the_markdown_tables(sweep):
    from lcc.outputs import tex_cell

    d, _ = sweep
    tex = (d / "sensitivity.tex").read_text()
    md = (d / "sensitivity.md").read_text()
    assert tex.count("\\begin{tabular}") == 5 and tex.count("\\toprule") == 5 and "\\caption{mean KL" in tex
    assert "& 1k & 2k \\\\" in tex and "$\\Delta$NLL" in tex and "\\label{tab:kl_slope_late}" in tex
    cells = [c.strip() for line in md.splitlines() if line.startswith("| tiny") for c in line.split("|")[5:-1]]
    assert len(cells) == 5 * 2 * 2 and "±" in cells[0]
    for c in cells:
        assert tex_cell(c) in tex
    assert " -- " in tex  # the late slope is undefined at 1k
    assert tex_cell("0.5 ± 0.01") == "0.5 $\\pm$ 0.01" and tex_cell("–") == "--"


def test_jobs_that_differ_in_another_key_draw_as_separate_lines(tmp_path):
    from lcc.outputs import variant_levels

    d = tmp_path / "seeds"
    p = run_cli("-m", "model=tiny", "logger=none", "n_docs=2", "ctx.tokens=256", "seed=0,1", f"hydra.sweep.dir={d}")
    assert p.returncode == 0, p.stderr[-2000:]
    tidy = pd.read_parquet(d / "curves.parquet")
    assert sorted(variant_levels(tidy).values()) == ["w4g128, seed=0", "w4g128, seed=1"]
    assert sorted(variant_levels(tidy[tidy.seed == 0]).values()) == ["w4g128"]


def test_tex_escape():
    from lcc.outputs import tex_escape

    assert tex_escape("w4_g128 & 50% #1 {x} ±") == r"w4\_g128 \& 50\% \#1 \{x\} $\pm$"


def test_figures_one_panel_per_compressor_colour_level_style_ctx(sweep):
    import matplotlib.pyplot as plt

    from lcc import figures
    from lcc.reduce import collect

    d, _ = sweep
    jobs = collect(d)
    tidy = pd.read_parquet(d / "curves.parquet")
    fig = figures.kl_vs_position_figure(tidy, jobs)
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["magnitude", "quant"]
    assert all(a.get_yscale() == "log" for a in axes) and axes[0].get_ylim() == axes[1].get_ylim()  # shared y
    for a in axes:
        lines = [ln for ln in a.get_lines() if len(ln.get_xdata()) > 1]
        assert len(lines) == 2  # one level x two ctx
        assert lines[0].get_color() == lines[1].get_color() and lines[0].get_linestyle() != lines[1].get_linestyle()
        labels = [t.get_text() for t in a.get_xticklabels()]
        assert "1k" in labels and "2k" in labels and "64" in labels
        assert len(a.collections) == 2  # one ±SE band per line
    plt.close(fig)
    fig = figures.sensitivity_figure(jobs[jobs.status == "ok"])
    axes = [a for a in fig.axes if a.get_visible()]
    assert len(axes) == 4 and [a.get_title() for a in axes[:2]] == ["magnitude", "quant"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["1k", "2k"]
    assert len(axes[0].containers) == 1 and len(axes[0].containers[0].lines[0].get_xdata()) == 2  # KL at 1k, 2k
    assert len(axes[2].containers[0].lines[0].get_xdata()) == 1  # the late slope needs ctx > 1k
    plt.close(fig)


def test_wandb_job_run_holds_history_with_custom_x_axes_and_artifact(sweep):
    from lcc.names import WANDB_CURVE_POINTS

    d, _ = sweep
    for jd in job_dirs(d):
        res = read_json(jd / "result.json")
        (run_dir,) = offline_runs(jd)
        r = OfflineRun(run_dir)
        assert r.run.job_type == "job" and r.run.run_group == d.name and r.run.display_name == jd.name
        ctx = {1024: "ctx=1k", 2048: "ctx=2k"}[res["ctx"]]
        assert r.tags == ["tiny", res["compressor"], res["level"], ctx]
        assert r.config["level"] == res["level"] and r.config["ctx_tokens"] == res["ctx"]
        assert r.config["compressor"]["name"] == res["compressor"] and r.config["n_docs"] == 2
        for glob in ("bin/*", "curve/*"):
            assert r.metrics[glob].step_metric == "log2_position" and r.metrics[glob].summary.none
        assert {"position", "log2_position"} <= set(r.metrics)
        bins = [h for h in r.history if "bin/kl_mean" in h]
        assert len(bins) == len(res["curve"])
        for h, b in zip(bins, res["curve"]):
            assert h["bin/kl_mean"] == b["kl_mean"] and h["bin/kl_se"] == b["kl_se"]
            assert h["log2_position"] == b["log2_pos"] and h["position"] == pytest.approx(2 ** b["log2_pos"])
            assert h["bin/kl_lo"] == pytest.approx(b["kl_mean"] - b["kl_se"])
        curve = [h for h in r.history if "curve/kl_mean" in h]
        per_pos = pd.read_parquet(jd / "curve.parquet")
        assert 100 < len(curve) <= WANDB_CURVE_POINTS and len(curve) + len(bins) == len(r.history)
        x = np.array([h["position"] for h in curve])
        assert x[0] == 1 and np.all(np.diff(x) > 0) and x[-1] > 0.9 * per_pos.position.max()
        assert curve[0]["curve/kl_mean"] == pytest.approx(per_pos.kl_mean[0])  # position 1: its own value
        assert list(x[:10]) == list(range(1, 11))  # every early position, then log-spaced group means
        assert np.log2(x[-1] / x[-2]) < 2 * np.log2(per_pos.position.max()) / WANDB_CURVE_POINTS
        assert r.summary["kl_mean"] == res["summary"]["kl_mean"] and r.summary["level"] == res["level"]
        assert "bin/kl_mean" not in r.summary and "position" not in r.summary  # no meaningless "last" values
        (art,) = r.artifacts
        assert art.type == "lcc-job" and sorted(e.path for e in art.manifest.contents) == ["curve.parquet",
                                                                                          "result.json"]


def test_wandb_reduce_run_holds_tables_figures_and_files(sweep):
    d, _ = sweep
    (run_dir,) = offline_runs(d)
    r = OfflineRun(run_dir)
    assert r.run.job_type == "reduce" and r.run.run_group == d.name and "reduce" in r.tags
    assert r.config["ctx_tokens"] == [1024, 2048] and r.config["compressors"] == ["magnitude", "quant"]
    (h,) = r.history
    csv = pd.read_csv(d / "sensitivity.csv")

    def table(key):
        assert h[f"{key}/_type"] == "table-file"
        return json.loads((run_dir / "files" / h[f"{key}/path"]).read_text())

    t = table("sensitivity")
    got = pd.DataFrame(t["data"], columns=t["columns"]).sort_values("job").reset_index(drop=True)
    want = csv.sort_values("job").reset_index(drop=True)
    assert list(got.job) == list(want.job) and np.allclose(got.kl_mean, want.kl_mean)
    assert np.allclose(got.kl_slope_late.astype(float), want.kl_slope_late, equal_nan=True)
    md = (d / "sensitivity.md").read_text()
    for key in ("table/mean_kl", "table/kl_slope", "table/kl_slope_late", "table/top1_agree", "table/delta_nll"):
        t = table(key)
        assert t["columns"] == ["model", "data", "compressor", "level", "1k", "2k"] and len(t["data"]) == 2
        assert all(cell in md for row in t["data"] for cell in row[4:])
    assert sorted(row[:2] for row in table("jobs")["data"]) == [[j.name, "ok"] for j in job_dirs(d)]
    for fig in ("figure/kl_vs_position", "figure/sensitivity"):
        assert h[f"{fig}/_type"] == "image-file" and (run_dir / "files" / h[f"{fig}/path"]).stat().st_size > 1000
    assert r.summary["jobs_ok"] == 4 and r.summary["jobs_failed"] == 0
    (art,) = [a for a in r.artifacts if a.type == "lcc-sweep"]
    names = {e.path for e in art.manifest.contents}
    assert {"sensitivity.csv", "sensitivity.md", "sensitivity.tex", "curves.parquet", "curves.csv",
            "plots/kl_vs_position.png", "plots/kl_vs_position.pdf", "plots/sensitivity.png"} <= names


def test_dashboard_reads_keys_the_runs_hold(sweep):
    """Every key the saved report queries is one the offline runs hold (history, config, summary, tables)."""
    import wandb_workspaces.reports.v2 as wr

    from lcc.dashboard import build_report, sweep_scope

    d, _ = sweep
    ctx, group = sweep_scope(d)
    assert ctx == [1024, 2048] and group == d.name
    report = build_report("lcc", "someone", ctx, group)
    jobs = [OfflineRun(offline_runs(jd)[0]) for jd in job_dirs(d)]
    reduce_run = OfflineRun(offline_runs(d)[0])
    history_keys = set().union(*(set(h) for j in jobs for h in j.history))
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    for g in grids:
        for rs in g.runsets:
            for key in rs.groupby:
                section, name = key.split(".", 1)
                assert section == "config"
                for j in jobs:
                    node = j.config
                    for part in name.split("."):
                        node = node[part]
        for p in g.panels:
            if isinstance(p, wr.LinePlot):
                assert p.x in history_keys and set(p.y) <= history_keys
            elif isinstance(p, wr.ScatterPlot):
                assert all(p.x.name in j.config and p.y.name in j.summary for j in jobs)
            elif isinstance(p, wr.WeavePanelSummaryTable):
                assert f"{p.table_name}/_type" in reduce_run.summary
            elif isinstance(p, wr.MediaBrowser):
                assert all(f"{k}/_type" in reduce_run.summary for k in p.media_keys)
    # the run queries select these runs: job type, ctx and group as the runs carry them
    for j in jobs:
        assert j.run.job_type == "job" and j.run.run_group == group and j.config["ctx_tokens"] in ctx
    assert reduce_run.run.job_type == "reduce" and reduce_run.run.run_group == group


def test_reduce_cli_logs_a_reduce_run_on_demand(sweep, tmp_path):
    d, _ = sweep
    before = offline_runs(d)
    p = run_cli(str(d), "--wandb", "--no-plots", module="lcc.reduce")
    assert p.returncode == 0, p.stderr[-2000:]
    after = offline_runs(d)
    assert len(after) == len(before) + 1
    new = OfflineRun((set(after) - set(before)).pop())
    assert new.run.job_type == "reduce" and new.run.run_id == OfflineRun(before[0]).run.run_id  # same run, resumed
    bad = run_cli(str(d), "--wandb-mode", "online", module="lcc.reduce")
    assert bad.returncode == 2 and "need --wandb" in bad.stderr


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_online_without_network_waits_seconds_warns_once_and_keeps_the_result(tmp_path):
    out = tmp_path / "job"
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}", "WANDB_API_KEY": "x" * 40, "WANDB_MODE": None}
    t = time.monotonic()
    p = run_cli("model=tiny", "n_docs=2", "ctx.tokens=256", "logger.mode=online", "logger.timeout_s=2",
                f"hydra.run.dir={out}", env=env)
    wall = time.monotonic() - t
    assert p.returncode == 0, p.stderr[-3000:]
    res = read_json(out / "result.json")
    assert res["status"] == "ok" and res["summary"]["kl_mean"] > 0
    warnings = [ln for ln in (out / "sweep.log").read_text().splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and "W&B online unreachable" in warnings[0] and "wandb sync" in warnings[0]
    (run_dir,) = offline_runs(out)  # the run, offline, for `wandb sync` later
    r = OfflineRun(run_dir)
    assert r.run.job_type == "job" and any("bin/kl_mean" in h for h in r.history)
    timings = res["timings"]["total_s"]
    assert wall - timings < 40, (wall, timings)  # was ~90 s of W&B retries per job; now the 2 s bound + startup
    assert math.isfinite(timings)
