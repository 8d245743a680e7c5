"""A real sweep through SLURM: hydra-submitit-launcher submits one job per combination to the one-node
cluster that scripts/slurm_cluster.sh starts; the results reduce to a 2x2 table."""
import pandas as pd
import pytest

from lcc.reduce import reduce
from tests.helpers import run_cli


@pytest.mark.slow
@pytest.mark.slurm
def test_2x2_sweep_on_slurm_lands_four_results_and_reduces(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "launcher=slurm", f"hydra.launcher.partition={slurm_cluster}",
            "hydra.launcher.srun_args=['--cpu-bind=none']",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10",
            "hydra.launcher.signal_delay_s=30", "model=tiny", "logger=none", "n_docs=2",
            "compressor=quant,magnitude", "ctx=1k,2k", f"hydra.sweep.dir={sweep}"]
    p = run_cli(*args, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "4 jobs: 4 ok, 0 failed, 0 missing" in p.stderr
    assert "ConfigStore schema" not in p.stderr and "deprecated" not in p.stderr
    # each job really ran under SLURM: submitit wrote its sbatch script (with srun_args) and per-task logs
    assert list((sweep / ".submitit").rglob("*_log.out"))
    scripts = [f.read_text() for f in (sweep / ".submitit").rglob("*.sh")]
    assert any("#SBATCH" in s and "--cpu-bind=none" in s for s in scripts)
    assert (sweep / "sensitivity.md").exists() and (sweep / "plots" / "kl_vs_position.png").exists()  # end of sweep
    df, text = reduce(sweep, plots=False)
    table = pd.read_csv(sweep / "sensitivity.csv")
    assert len(table) == 4 and (table.kl_mean > 0).all() and table.kl_se.notna().all()
    assert set(zip(table.compressor, table.ctx)) == {("quant", 1024), ("quant", 2048),
                                                     ("magnitude", 1024), ("magnitude", 2048)}
    # launching the same sweep again finds every job complete and recomputes nothing
    p2 = run_cli(*args, timeout=600)
    assert p2.returncode == 0 and "4 ok" in p2.stderr
    for r in sweep.glob("*/result.json"):
        assert "already complete" in (r.parent / "sweep.log").read_text()
