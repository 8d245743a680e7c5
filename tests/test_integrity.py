"""Results are never lost, never private, never trusted unless verified (issue 9, classes 3, 5, 7, 8):
checksums in result.json (resume and reduce verify them), umask-honouring files, full-disk messages that
name the folder, reduce over malformed files, and tables that keep every job visible."""
from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from lcc.io import files_problem, write_json, write_safetensors
from lcc.job import run
from lcc.reduce import reduce
from tests.helpers import make_cfg, run_cli

TINY = ["model=tiny", "logger=none", "n_docs=2", "ctx.tokens=256"]


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ---- class 8: umask -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_get_the_umask_permissions(tmp_path, mask, expected):
    with umask(mask):
        write_json(tmp_path / "r.json", {"a": 1})
        write_safetensors(tmp_path / "t.safetensors", {"x": torch.zeros(3)})
    assert mode(tmp_path / "r.json") == expected and mode(tmp_path / "t.safetensors") == expected


def test_a_jobs_files_and_cache_entries_are_readable_by_the_group(tmp_path):
    with umask(0o002):
        run(make_cfg([*TINY, "compressor=magnitude", f"++cache.dir={tmp_path / 'cache'}"], tmp_path / "job"))
    for f in ("result.json", "curve.parquet", "tokens.safetensors"):
        assert mode(tmp_path / "job" / f) == 0o664, f
    entries = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert entries and all(mode(p) == 0o664 for p in entries), [(p, oct(mode(p))) for p in entries]


# ---- class 7: checksums ----------------------------------------------------------------------------------
def test_resume_reruns_a_job_whose_files_do_not_match_their_checksums(tmp_path):
    cfg = make_cfg([*TINY, "compressor=quant"], tmp_path)
    first = run(cfg)
    assert set(first["checksums"]) == {"tokens.safetensors", "curve.parquet"}
    assert files_problem(tmp_path, first) is None
    curve = tmp_path / "curve.parquet"

    def rerun_after(damage) -> None:
        damage()
        assert files_problem(tmp_path, json.loads((tmp_path / "result.json").read_text()))
        stamp = (tmp_path / "result.json").stat().st_mtime_ns
        again = run(cfg)
        assert (tmp_path / "result.json").stat().st_mtime_ns != stamp, "a damaged job was skipped"
        assert again["summary"] == first["summary"] and files_problem(tmp_path, again) is None

    rerun_after(lambda: curve.write_bytes(curve.read_bytes()[:100]))  # truncated
    tokens = tmp_path / "tokens.safetensors"
    data = bytearray(tokens.read_bytes())
    data[-5] ^= 0xFF
    rerun_after(lambda: tokens.write_bytes(bytes(data)))  # same size, one byte changed
    res = json.loads((tmp_path / "result.json").read_text())
    del res["checksums"]
    rerun_after(lambda: (tmp_path / "result.json").write_text(json.dumps(res)))  # no checksums: not trusted
    stamp = (tmp_path / "result.json").stat().st_mtime_ns
    run(cfg)  # intact: skipped
    assert (tmp_path / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_reduce_flags_a_damaged_job_and_a_relaunch_repairs_it(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "compressor=quant,magnitude", f"hydra.sweep.dir={sweep}"]
    assert run_cli(*args).returncode == 0
    curve = next(sweep.glob("compressor=quant,*")) / "curve.parquet"
    curve.write_bytes(curve.read_bytes()[:200])
    p = run_cli(str(sweep), "--no-plots", module="lcc.reduce")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "1 ok, 0 failed, 0 missing, 1 corrupt" in p.stdout and "curve.parquet has 200 bytes" in p.stdout
    p = run_cli(*args)
    assert p.returncode == 0 and "2 jobs: 2 ok" in p.stderr
    assert run_cli(str(sweep), "--no-plots", module="lcc.reduce").returncode == 0


# ---- class 5: reduce over malformed files -----------------------------------------------------------------
@pytest.fixture(scope="module")
def one_result(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "q"
    run(make_cfg([*TINY, "compressor=quant"], out))
    return out


@pytest.mark.parametrize("content,needle", [
    ("[]", "not a JSON object but list"),
    ('{"status": "ok"}', "'config' is missing"),
    ("{", "unreadable"),
    ("CTX", "'ctx' is missing or not an integer"),
])
def test_reduce_lists_a_malformed_result_instead_of_crashing(tmp_path, one_result, content, needle):
    sweep = tmp_path / "sweep"
    shutil.copytree(one_result, sweep / "good")
    (sweep / "bad").mkdir()
    if content == "CTX":
        res = json.loads((one_result / "result.json").read_text())
        content = json.dumps({**res, "ctx": "abc"})
    (sweep / "bad" / "result.json").write_text(content)
    p = run_cli(str(sweep), "--no-plots", module="lcc.reduce")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert needle in p.stdout and "| bad" in p.stdout and "1 ok" in p.stdout


@pytest.mark.parametrize("manifest", ["[1, 2]", '{"jobs": [{"num": 0}]}', "{not json"])
def test_reduce_names_a_malformed_manifest(tmp_path, one_result, manifest):
    sweep = tmp_path / "sweep"
    shutil.copytree(one_result, sweep / "good")
    (sweep / "lcc_jobs.json").write_text(manifest)
    p = run_cli(str(sweep), "--no-plots", module="lcc.reduce")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "lcc_jobs.json is" in p.stderr and "fix or delete it" in p.stderr


# ---- class 3: no job hides behind another in a table ----------------------------------------------------------
def test_jobs_that_differ_off_the_table_axes_stay_visible(tmp_path):
    sweep = tmp_path / "sweep"
    for name, extra in [("s0", ["seed=0"]), ("s1", ["seed=1"]),
                        ("w4", ["compressor=wanda", "calib.n_samples=2", "calib.seqlen=64"]),
                        ("w8", ["compressor=wanda", "calib.n_samples=4", "calib.seqlen=64"])]:
        comp = [] if any(e.startswith("compressor=") for e in extra) else ["compressor=magnitude"]
        run(make_cfg([*TINY, *comp, *extra], sweep / name))
    df, text = reduce(sweep, plots=False)
    table = pd.read_csv(sweep / "sensitivity.csv")
    assert len(table) == 4 and {"seed", "calib.n_samples"} <= set(table.columns)
    assert "Jobs differ in keys that are not table axes: calib.n_samples, seed" in text
    kl_table = text.split("## mean KL")[1].split("##")[0]
    assert kl_table.count("| smollm2") == 0 and kl_table.count("| tiny") == 4  # one row per job
    rows = {(r.compressor, str(r.seed), str(r["calib.n_samples"])) for _, r in table.iterrows()}
    assert len(rows) == 4


def test_identical_configs_in_two_folders_both_stay_visible(tmp_path, one_result):
    shutil.copytree(one_result, tmp_path / "sweep" / "a")
    shutil.copytree(one_result, tmp_path / "sweep" / "b")
    _, text = reduce(tmp_path / "sweep", plots=False)
    kl_table = text.split("## mean KL")[1].split("##")[0]
    assert "| a " in kl_table and "| b " in kl_table


# ---- class 5: a full disk during a write names the folder -----------------------------------------------------
@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes beyond ``nbytes`` fail with EFBIG (as a full disk fails with ENOSPC), for this process only."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_a_write_that_runs_out_of_room_names_the_folder(tmp_path):
    from lcc.cache import TensorStore

    store = TensorStore(tmp_path / "cache", "dense")
    store.ensure_writable()  # as get_or_create does before it writes
    big = {"x": torch.zeros(1 << 16)}  # 256 KiB
    with file_size_limit(64 << 10), pytest.raises(OSError) as e:
        store.write("k" * 64, big, {})
    assert f"cannot write the lcc cache at {store.dir}" in str(e.value) and "cache.enabled=false" in str(e.value)
    assert not any(store.dir.iterdir())  # no partial entry left
    with file_size_limit(64 << 10), pytest.raises(OSError) as e:
        write_safetensors(tmp_path / "job" / "tokens.safetensors", big)
    assert f"cannot write {tmp_path / 'job' / 'tokens.safetensors'}" in str(e.value)
    assert list((tmp_path / "job").iterdir()) == []


def test_a_full_disk_during_a_cache_write_names_the_folder(tmp_path, monkeypatch):
    """A real ENOSPC from a 1 MiB tmpfs (needs root to mount). The free-space check before the write is
    bypassed, as when another job fills the disk between that check and the write."""
    from lcc.cache import TensorStore

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and tmpfs mounts")
    try:
        store = TensorStore(mnt, "dense")
        store.ensure_writable()
        monkeypatch.setattr(TensorStore, "check_space", lambda self, n: None)
        with pytest.raises(OSError) as e:
            store.write("k" * 64, {"x": torch.zeros(1 << 19)}, {})  # 2 MiB
        assert "cannot write the lcc cache at" in str(e.value) and "No space left" in str(e.value)
        assert "SafetensorError" not in str(e.value)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
