"""Whole jobs and sweeps on the tiny model: files, resume of identical jobs, reduce, W&B offline."""
import json
import math

import pandas as pd
import pytest
from safetensors.torch import load_file

from lcc.job import run
from lcc.reduce import reduce
from tests.helpers import make_cfg, run_cli

TINY = ["model=tiny", "logger=none", "n_docs=3", "ctx.tokens=512"]


def test_dense_vs_dense_is_exactly_zero(tmp_path):
    res = run(make_cfg([*TINY, "compressor=none"], tmp_path))
    assert res["status"] == "ok" and res["summary"]["kl_mean"] == 0.0 and res["summary"]["kl_max"] == 0.0
    assert res["summary"]["top1_agree"] == 1.0 and res["summary"]["delta_nll"] == 0.0


def test_job_writes_complete_files(tmp_path):
    res = run(make_cfg([*TINY, "compressor=quant", "compressor.bits=3"], tmp_path))
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["status"] == "ok" and saved["config"]["compressor"]["bits"] == 3
    assert saved["summary"]["kl_mean"] > 0 and math.isfinite(saved["summary"]["kl_se"])
    t = load_file(tmp_path / "tokens.safetensors")
    assert t["kl"].shape == (3, 511)  # positions 1..511 of 512-token windows
    assert abs(t["kl"].mean().item() - saved["summary"]["kl_mean"]) < 1e-6
    curve = pd.read_parquet(tmp_path / "curve.parquet")
    assert list(curve.position[:2]) == [1, 2] and len(curve) == 511
    assert [c["bin_lo"] for c in saved["curve"]] == [1, 64, 128, 256]
    assert {"load_s", "dense_forward_s", "compress_s", "compressed_forward_s", "metrics_s"} <= set(
        saved["timings"])
    assert res["summary"] == saved["summary"]


def test_one_document_job_stores_undefined_statistics_as_null(tmp_path):
    # one window: no standard errors; 512 tokens: no bin starts late enough for the late slope
    res = run(make_cfg(["model=tiny", "logger=none", "n_docs=1", "ctx.tokens=512", "compressor=quant"], tmp_path))
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["summary"]["kl_mean"] > 0 and saved["summary"]["kl_se"] is None
    assert saved["summary"]["kl_slope_late"] is None and saved["curve"][0]["kl_se"] is None
    assert res["summary"] == saved["summary"] and res["curve"] == saved["curve"]


def test_finished_job_is_skipped_and_failed_job_records_traceback(tmp_path, caplog):
    cfg = make_cfg([*TINY, "compressor=magnitude"], tmp_path)
    first = run(cfg)
    mtime = (tmp_path / "result.json").stat().st_mtime_ns
    again = run(cfg)
    assert again["summary"] == first["summary"] and (tmp_path / "result.json").stat().st_mtime_ns == mtime
    # a failure only the job can find (the text is too short for the windows) is recorded with its traceback
    (tmp_path / "short.txt").write_text("too short a text\n" * 20)
    bad = make_cfg(["model=tiny", "logger=none", "data=text", f"data.paths=[{tmp_path / 'short.txt'}]"],
                   tmp_path / "bad")
    with pytest.raises(Exception, match="too short"):
        run(bad)
    saved = json.loads((tmp_path / "bad" / "result.json").read_text())
    assert saved["status"] == "failed" and "too short" in saved["error"] and "Traceback" in saved["traceback"]


@pytest.mark.slow
def test_2x2_multirun_with_submitit_local_then_reduce(tmp_path):
    sweep = tmp_path / "sweep"
    p = run_cli("-m", "launcher=local", "model=tiny", "logger=none", "n_docs=3",
                "compressor=quant,magnitude", "ctx=1k,2k", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "4 jobs: 4 ok, 0 failed, 0 missing" in p.stderr
    assert "ConfigStore schema" not in p.stderr and "deprecated" not in p.stderr  # the preset warns of nothing
    results = sorted(sweep.glob("*/result.json"))
    assert len(results) == 4 and not [r for r in results if "launcher" in r.parent.name]
    assert list((sweep / ".submitit").rglob("*_log.out"))  # the jobs ran through submitit
    # the sweep ended with its reduce (logger=none: no W&B reduce run)
    assert (sweep / "sensitivity.md").exists() and not (sweep / "wandb").exists()
    df, text = reduce(sweep)
    table = pd.read_csv(sweep / "sensitivity.csv")
    assert len(table) == 4 and table.kl_mean.notna().all() and (table.kl_mean > 0).all()
    assert table.kl_se.notna().all() and (table.kl_se > 0).all()
    assert set(table.ctx) == {1024, 2048} and set(table.compressor) == {"quant", "magnitude"}
    assert "| 1k" in text and "| 2k" in text and "±" in text
    assert sorted(f.name for f in (sweep / "plots").iterdir()) == [
        "kl_vs_position.pdf", "kl_vs_position.png", "sensitivity.pdf", "sensitivity.png"]
    assert (sweep / "plots" / "kl_vs_position.png").stat().st_size > 1000
    # the CLI prints the same table and exits 0 when every job is ok
    p2 = run_cli(str(sweep), module="lcc.reduce")
    assert p2.returncode == 0 and "mean KL" in p2.stdout


@pytest.mark.slow
def test_failed_and_missing_jobs_are_listed(tmp_path):
    sweep = tmp_path / "sweep"
    # 64k-token windows x 8 do not fit in pydoc's ~466k bytes: that job fails at run time
    p = run_cli("-m", "model=tiny", "logger=none", "n_docs=8", "model.max_position_embeddings=131072",
                "ctx=1k,64k", f"hydra.sweep.dir={sweep}")
    assert p.returncode != 0
    assert "2 jobs: 1 ok, 1 failed, 0 missing" in p.stderr
    manifest = json.loads((sweep / "lcc_jobs.json").read_text())
    assert len(manifest["jobs"]) == 2
    # a job of the manifest that never produced a result is "missing"
    manifest["jobs"].append({"num": 2, "overrides": ["ctx=2k"], "dir": "ctx=2k,never-ran"})
    (sweep / "lcc_jobs.json").write_text(json.dumps(manifest))
    df, text = reduce(sweep)
    assert sorted(df.status) == ["failed", "missing", "ok"]
    assert "too short" in text and "never-ran" in text
    assert run_cli(str(sweep), module="lcc.reduce").returncode == 1


@pytest.mark.slow
def test_wandb_offline_run_and_wandb_failure_keeps_results(tmp_path):
    out = tmp_path / "job"
    res = run(make_cfg(["model=tiny", "n_docs=2", "ctx.tokens=256", "logger=wandb"], out))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert res["status"] == "ok" and len(runs) == 1
    assert any(f.suffix == ".wandb" and f.stat().st_size > 0 for f in runs[0].iterdir())
    # W&B failing (here: wandb.init raises) never loses the local result
    import wandb

    def broken_init(*a, **k):
        raise RuntimeError("W&B is down")

    out2 = tmp_path / "job2"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(wandb, "init", broken_init)
        res2 = run(make_cfg(["model=tiny", "n_docs=2", "ctx.tokens=256", "logger=wandb"], out2))
    assert res2["status"] == "ok" and json.loads((out2 / "result.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_study_experiment_runs_its_whole_grid_in_one_command(tmp_path):
    sweep = tmp_path / "study"
    p = run_cli("-m", "experiment=study", "model=tiny", "ctx=1k", "n_docs=2", "calib.n_samples=4",
                "calib.seqlen=128", "logger=none", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "16 jobs: 16 ok, 0 failed, 0 missing" in p.stderr  # ctx on the command line replaced the grid's
    table = pd.read_csv(reduce(sweep, plots=False)[0].pipe(lambda _: sweep / "sensitivity.csv"))
    rows = set(zip(table.compressor, table.level))
    assert {c for c, _ in rows} == {"magnitude", "wanda", "quant", "quant_wa", "mixed", "random", "none"}
    assert len(rows) == 16 and set(table.ctx) == {1024}
    assert table.set_index("compressor").loc["none", "kl_mean"] == 0.0


def test_a_second_launch_into_the_same_sweep_dir_extends_the_manifest(tmp_path):
    sweep = tmp_path / "sweep"
    base = ["-m", "model=tiny", "logger=none", "n_docs=2", "ctx.tokens=256", f"hydra.sweep.dir={sweep}"]
    p = run_cli(*base, "compressor=quant", "hydra.sweeper.reduce=false")
    assert p.returncode == 0 and "1 jobs: 1 ok, 0 failed, 0 missing" in p.stderr
    assert not (sweep / "sensitivity.md").exists()  # the end-of-sweep reduce was switched off
    p = run_cli(*base, "compressor=magnitude,quant", "hydra.sweeper.max_batch_size=1")  # two batches of one
    assert p.returncode == 0 and "2 jobs: 2 ok, 0 failed, 0 missing" in p.stderr
    jobs = json.loads((sweep / "lcc_jobs.json").read_text())["jobs"]
    assert sorted(j["dir"] for j in jobs) == sorted({j["dir"] for j in jobs}) and len(jobs) == 2
    assert (sweep / "sensitivity.md").exists() and "2 jobs: 2 ok" in (sweep / "sensitivity.md").read_text()
    df, _ = reduce(sweep, plots=False)
    assert sorted(df.status) == ["ok", "ok"]
