"""Pytest fixture that brings up a one-node SLURM cluster (scripts/slurm_cluster.sh) for the session.

Use it from a test (or re-export it from conftest.py: ``from slurm_fixture import slurm_cluster``)::

    @pytest.mark.slurm
    def test_x(slurm_cluster, tmp_path):
        ex = slurm_executor(tmp_path, slurm_cluster)
        assert ex.submit(pow, 2, 3).result() == 8

The fixture returns the partition name. It skips when not root (the daemons run as root); as root it
must succeed (CI runs as root), so a failing start is a test error, not a skip.

Jobs inherit the submitting process's environment (sbatch's default --export=ALL) and its working
directory, and submitit runs them with the same ``sys.executable`` (the venv's python). The fixture
also puts the repo root on PYTHONPATH for the session so a job can ``import lcc`` from any cwd.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
PARTITION = os.environ.get("SLURM_PARTITION_NAME", "debug")


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start (or reuse) the local SLURM cluster; return the partition to submit to."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("scripts/slurm_cluster.sh needs root to start munged/slurmctld/slurmd")
    if shutil.which("bash") is None:
        pytest.skip("bash not found")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900,
                              env={**os.environ, "SLURM_PARTITION_NAME": PARTITION})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{SCRIPT} timed out after {e.timeout}s:\n{e.stdout or ''}\n{e.stderr or ''}")
    if proc.returncode != 0:
        pytest.fail(f"{SCRIPT} failed (rc={proc.returncode}) after {time.monotonic() - t0:.0f}s:\n"
                    f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    mp = pytest.MonkeyPatch()
    pp = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in pp.split(os.pathsep):
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), pp) if p))
    try:
        yield PARTITION
    finally:
        mp.undo()  # the cluster itself is left running: cheap to reuse, the script is idempotent


def slurm_executor(folder, partition: str, **params):
    """A submitit executor on the local cluster with small defaults (override with ``params``)."""
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(**{"slurm_partition": partition, "timeout_min": 2, "cpus_per_task": 1,
                            "mem_gb": 1, **params})
    return ex


def wait_result(job, timeout_s: float = 120.0, grace_s: float = 5.0):
    """``job.result()`` with a deadline. Needed because the cluster has no accounting: submitit reads job
    states from sacct, so a job killed without writing its result (signal, OOM, time limit) would leave
    ``job.result()`` waiting forever. Here a job that left squeue without a result fails the test."""
    deadline = time.monotonic() + timeout_s
    gone_since = None
    while not job.done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job.job_id} not done after {timeout_s}s\n{_logs(job)}")
        q = subprocess.run(["squeue", "-h", "-j", str(job.job_id)], capture_output=True, text=True)
        if q.returncode == 0 and not q.stdout.strip():
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > grace_s:
                raise RuntimeError(f"job {job.job_id} left the queue without a result\n{_logs(job)}")
        time.sleep(0.5)
    return job.result()


def _logs(job) -> str:
    return f"--- stdout ---\n{job.stdout() or ''}\n--- stderr ---\n{job.stderr() or ''}"
