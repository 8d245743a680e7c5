"""Resume and preemption: finished jobs are skipped, failed/missing ones rerun, and a job killed at any
moment leaves no file that looks complete (neither result.json nor a cache entry)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lcc.cache import TensorStore

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "lcc" / "conf")
BASE = ["model=tiny", "logger=none", "n_docs=2", "ctx.tokens=256", "compressor=quant"]


def compose_cfg(tmp: Path, name: str, *overrides: str):
    import lcc.sweep  # noqa: F401  (registers the lcc_subdir resolver)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("sweep", overrides=[*BASE, f"output_dir={tmp / name}", f"++cache.dir={tmp / 'cache'}",
                                           "++cache.compressed=true", *overrides])


def test_finished_job_is_skipped_and_failed_one_rerun(tmp_path, monkeypatch):
    import lcc.job

    first = lcc.job.run(compose_cfg(tmp_path, "j"))
    assert first["status"] == "ok"

    def must_not_run(*a, **k):
        raise AssertionError("a finished job was recomputed")

    with monkeypatch.context() as m:
        m.setattr(lcc.job, "open_job", must_not_run)
        again = lcc.job.run(compose_cfg(tmp_path, "j"))
    assert again["summary"] == first["summary"]

    # a failed job is rerun
    res = tmp_path / "j" / "result.json"
    res.write_text(json.dumps({**first, "status": "failed"}))
    assert lcc.job.run(compose_cfg(tmp_path, "j"))["status"] == "ok"
    # so is one whose files are gone, and one from another config (set aside, not lost)
    (tmp_path / "j" / "curve.parquet").unlink()
    assert lcc.job.run(compose_cfg(tmp_path, "j"))["status"] == "ok"
    assert lcc.job.run(compose_cfg(tmp_path, "j", "compressor.bits=3"))["level"] == "w3g128"
    assert list((tmp_path / "j").glob("result.stale-*.json"))


def _sweep(sweep_dir: Path, cache: Path) -> str:
    cmd = [sys.executable, "-m", "lcc.sweep", "-m", "model=tiny", "logger=none", "n_docs=2", "ctx.tokens=256",
           "compressor=quant,magnitude", f"++cache.dir={cache}", f"hydra.sweep.dir={sweep_dir}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


@pytest.mark.slow
def test_relaunched_sweep_skips_finished_and_reruns_missing(tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    _sweep(sweep, cache)
    results = sorted(sweep.glob("*/result.json"))
    assert len(results) == 2
    done, gone = results
    stamp = done.stat().st_mtime_ns
    gone.unlink()
    log = _sweep(sweep, cache)
    assert log.count("job already complete for this config, skipping") == 1
    assert done.stat().st_mtime_ns == stamp
    assert json.loads(gone.read_text())["status"] == "ok"
    assert json.loads(gone.read_text())["cache"]["dense"] == "hit"


KILLED_JOB = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import lcc.forward
    from test_resume import compose_cfg  # cache.compressed=true: exercise the compressed-weights cache too
    real = lcc.forward.compressed_pass

    def slow(*a, **k):
        Path({marker!r}).write_text("in compressed pass")
        time.sleep(120)
        return real(*a, **k)

    lcc.forward.compressed_pass = slow
    from lcc.job import run
    run(compose_cfg(Path({tmp!r}), "job"))
""")


def test_killed_job_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    script = KILLED_JOB.format(tests=str(ROOT / "tests"), marker=str(marker), tmp=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while not marker.exists():
            assert p.poll() is None, p.stderr.read().decode()[-3000:]
            assert time.time() - t0 < 120, "job never reached the compressed pass"
            time.sleep(0.1)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
        p.stderr.close()
    out = tmp_path / "job"
    res = out / "result.json"
    assert not res.exists() or json.loads(res.read_text())["status"] != "ok"
    assert not (out / "tokens.safetensors").exists()
    for kind in ("dense", "compressed"):  # both entries were complete before the kill, and verify
        store = TensorStore(tmp_path / "cache", kind)
        entries = [d.name for d in store.dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
        assert len(entries) == 1
        assert store.read(entries[0]) is not None
        assert not [d for d in store.dir.iterdir() if ".tmp-" in d.name]

    import lcc.job
    r = lcc.job.run(compose_cfg(tmp_path, "job"))
    assert r["status"] == "ok" and r["cache"]["dense"] == "hit" and r["cache"]["compressed"] == "hit"
    assert json.loads(res.read_text())["status"] == "ok"


@pytest.mark.parametrize("when", ["dense", "compress"])
def test_exception_mid_job_leaves_no_cache_entry(tmp_path, monkeypatch, when):
    """SystemExit (submitit's preemption handler exits this way) in the middle of computing an entry."""
    import lcc.forward
    import lcc.job
    from lcc.compressors.simple import Quant

    def interrupted(*a, **k):
        raise SystemExit(-1)

    if when == "dense":
        monkeypatch.setattr(lcc.forward, "dense_pass", interrupted)
    else:
        monkeypatch.setattr(Quant, "compress", interrupted)
    with pytest.raises(SystemExit):
        lcc.job.run(compose_cfg(tmp_path, "job"))
    store = TensorStore(tmp_path / "cache", when if when == "dense" else "compressed")
    assert not store.dir.exists() or not [d for d in store.dir.iterdir() if d.is_dir()]
    assert not (tmp_path / "job" / "result.json").exists()
