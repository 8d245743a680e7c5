"""End-to-end check of the local SLURM cluster: submitit submits a python function, SLURM runs it;
a Hydra app launches through lcc/conf/launcher/slurm.yaml.

Run: ``python -m pytest tests/test_slurm_cluster.py -x -q`` (as root; starts the cluster if needed).
The launcher-config schema check at the bottom needs no cluster and is not marked slurm/slow.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import cloudpickle
import pytest

from slurm_fixture import REPO, slurm_cluster, slurm_executor, wait_result  # noqa: F401  (fixture)


# pytest imports this file as a top-level module from tests/, which a job would not find on its
# path: ship this module's functions by value instead of by reference.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _job(a: int, b: int) -> dict:
    import lcc  # the repo must be importable inside the job

    return {"sum": a + b, "python": sys.executable, "lcc": lcc.__file__,
            "job_id": os.environ.get("SLURM_JOB_ID"), "partition": os.environ.get("SLURM_JOB_PARTITION")}


@pytest.mark.slurm
@pytest.mark.slow
def test_submitit_job_roundtrip(slurm_cluster, tmp_path):
    ex = slurm_executor(tmp_path, slurm_cluster)
    job = ex.submit(_job, 2, 3)
    out = wait_result(job)
    assert out["sum"] == 5
    assert out["job_id"] == str(job.job_id)
    assert out["partition"] == slurm_cluster
    assert os.path.realpath(out["python"]) == os.path.realpath(sys.executable)
    assert out["lcc"].startswith(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slurm
@pytest.mark.slow
def test_submitit_job_array(slurm_cluster, tmp_path):
    ex = slurm_executor(tmp_path, slurm_cluster, slurm_array_parallelism=2)
    jobs = ex.map_array(pow, [2, 3, 4], [2, 2, 2])
    assert [wait_result(j) for j in jobs] == [4, 9, 16]


@pytest.mark.slurm
@pytest.mark.slow
def test_killed_job_does_not_hang(slurm_cluster, tmp_path):
    """No accounting -> submitit cannot see a job die; wait_result must notice it left the queue."""
    import time

    job = slurm_executor(tmp_path, slurm_cluster).submit(time.sleep, 120)
    subprocess.run(["scancel", str(job.job_id)], check=True)
    with pytest.raises(RuntimeError, match="left the queue without a result"):
        wait_result(job, timeout_s=60)


HYDRA_APP = """
import os
import hydra

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    with open(os.path.join(os.environ["OUT_DIR"], f"x{cfg.x}.txt"), "w") as f:
        f.write(f"{os.environ.get('SLURM_JOB_ID')} {os.environ.get('SLURM_JOB_PARTITION')}")

if __name__ == "__main__":
    main()
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_hydra_submitit_slurm_launcher(slurm_cluster, tmp_path):
    """A Hydra multirun through lcc's launcher preset (lcc/conf/launcher/slurm.yaml) runs each job in SLURM."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(textwrap.dedent(f"""\
        x: 0
        hydra:
          searchpath: ["file://{REPO / 'lcc' / 'conf'}"]
          sweep: {{dir: "{tmp_path / 'multirun'}"}}
        """))
    (tmp_path / "app.py").write_text(HYDRA_APP)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "app.py", "-m", "x=1,2", "+launcher=slurm",
         f"hydra.launcher.partition={slurm_cluster}", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.timeout_min=5", "hydra.launcher.signal_delay_s=30"],  # signal at timeout - delay
        cwd=tmp_path, env={**os.environ, "OUT_DIR": str(out)}, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ConfigStore schema" not in proc.stderr and "deprecated" not in proc.stderr
    for x in (1, 2):
        job_id, partition = (out / f"x{x}.txt").read_text().split()
        assert job_id.isdigit() and partition == slurm_cluster
    assert list((tmp_path / "multirun" / ".submitit").glob("*_0/*_0_0_log.out"))  # submitit's per-job logs


@pytest.mark.parametrize("kind", ["slurm", "local"])
def test_launcher_presets_match_plugin_schema(kind):
    """lcc/conf/launcher/<kind>.yaml selects the plugin's launcher (lcc_slurm: the plugin's SlurmLauncher with
    srun_args) and sets only field names of its schema, with valid types."""
    from hydra_plugins.hydra_submitit_launcher import config as plugin
    from hydra_plugins.lcc_sweeper.lcc_launcher import LccSlurmQueueConf
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(LccSlurmQueueConf if kind == "slurm" else plugin.LocalQueueConf)
    yaml = OmegaConf.load(REPO / "lcc" / "conf" / "launcher" / f"{kind}.yaml")
    assert list(yaml.defaults) == [{"override /hydra/launcher": "lcc_slurm" if kind == "slurm" else "submitit_local"}]
    merged = OmegaConf.merge(schema, yaml.hydra.launcher)  # raises on an unknown key or a wrong type
    assert merged._target_ == (plugin.SlurmQueueConf if kind == "slurm" else plugin.LocalQueueConf)._target_
    raw = OmegaConf.to_container(yaml.hydra.launcher, resolve=False)
    assert raw["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    assert not (REPO / "lcc" / "conf" / "hydra" / "launcher").exists()  # no file named like a plugin's schema node
