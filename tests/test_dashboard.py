"""The saved W&B report (lcc.dashboard), built offline: its panels and the run queries behind them.
(Saving needs the W&B API; tests/test_results.py checks that every key it reads is one lcc's runs hold.)"""
import pytest
import wandb_workspaces.reports.v2 as wr
from wandb_workspaces import expr

from lcc.dashboard import build_report, main, parse_ctx


def leaves(filters: str) -> dict:
    """The (section, name) -> value leaves of a run query, parsed into W&B's filter tree."""
    out, todo = {}, [expr.expr_to_filters(filters)]
    while todo:
        f = todo.pop()
        if f.filters:
            assert f.op == "AND"
            todo += f.filters
        else:
            assert f.op == "="
            out[(f.key.section, f.key.name)] = f.value
    return out


def grids(report):
    return [b for b in report.blocks if isinstance(b, wr.PanelGrid)]


def test_one_grid_per_ctx_grouped_by_compressor_and_level():
    report = build_report("lcc", "team", [2048, 1024, 8192], group="demo")
    assert report.project == "lcc" and report.entity == "team"
    per_ctx = [g for g in grids(report) if "Config('ctx_tokens')" in g.runsets[0].filters]
    assert len(per_ctx) == 3
    for g, ctx in zip(per_ctx, [1024, 2048, 8192]):  # ascending
        (rs,) = g.runsets
        assert rs.project == "lcc" and rs.entity == "team"
        assert rs.groupby == ["config.compressor.name", "config.level"]
        assert leaves(rs.filters) == {("run", "jobType"): "job", ("config", "ctx_tokens"): ctx,
                                      ("run", "group"): "demo"}
        lines = [p for p in g.panels if isinstance(p, wr.LinePlot)]
        assert [p.y for p in lines] == [["bin/kl_mean"], ["curve/kl_mean"]]
        assert all(p.x == "position" and p.log_x and p.groupby_rangefunc == "stderr" for p in lines)


def test_sensitivity_and_tables_panels():
    report = build_report("lcc", "team", [1024])
    sens, red = grids(report)[-2:]
    assert leaves(sens.runsets[0].filters) == {("run", "jobType"): "job"}  # no group: the whole project
    scat = [p for p in sens.panels if isinstance(p, wr.ScatterPlot)]
    assert [(p.x.name, p.y.name) for p in scat] == [("ctx_tokens", "kl_mean"), ("ctx_tokens", "kl_slope_late")]
    assert leaves(red.runsets[0].filters) == {("run", "jobType"): "reduce"}
    assert [p.table_name for p in red.panels if isinstance(p, wr.WeavePanelSummaryTable)] == [
        "table/mean_kl", "table/kl_slope_late"]
    (media,) = [p for p in red.panels if isinstance(p, wr.MediaBrowser)]
    assert media.media_keys == ["figure/kl_vs_position", "figure/sensitivity"]


def test_cli_dry_run_and_bad_ctx(capsys):
    assert main(["--project", "lcc", "--entity", "team", "--ctx", "1k,4096", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ctx 1k" in out and "ctx 4k" in out and "bin/kl_mean" in out
    assert parse_ctx("1k, 2K,300") == [1024, 2048, 300]
    with pytest.raises(SystemExit, match="'x3' is not a context length"):
        parse_ctx("1k,x3")
    with pytest.raises(SystemExit):  # --dry-run cannot ask the API for the project's context lengths
        main(["--project", "lcc", "--entity", "team", "--dry-run"])
