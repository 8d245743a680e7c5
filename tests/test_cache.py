"""The dense-reference and compressed-weight caches (lcc.cache + lcc.job): hits give the same numbers as
no cache, racing jobs compute once, corrupted/truncated entries are recomputed, write errors are clear."""
from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lcc import ConfigError
from lcc.cache import TensorStore, file_checksum, key_of, pack_bits, unpack_bits

CONF = str(Path(__file__).resolve().parent.parent / "lcc" / "conf")


# ---- TensorStore ---------------------------------------------------------------------------------
def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"windows": torch.randint(0, 256, (2, 64), generator=g),
            "hidden.0000": torch.randn(64, 16, generator=g), "hidden.0001": torch.randn(64, 16, generator=g)}


def _leftovers(store: TensorStore) -> list[str]:
    return [p.name for p in store.dir.iterdir() if ".tmp-" in p.name or ".trash-" in p.name] \
        if store.dir.exists() else []


def test_roundtrip_miss_then_hit(tmp_path):
    store = TensorStore(tmp_path, "dense")
    calls = []

    def compute():
        calls.append(1)
        return _tensors(), {"dense_forward_s": 1.5}

    key = key_of({"a": 1})
    t1, m1, hit1 = store.get_or_create(key, {"a": 1}, compute)
    t2, m2, hit2 = store.get_or_create(key, {"a": 1}, compute)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert all(torch.equal(t1[k], t2[k]) for k in t1)
    assert m2["facts"] == {"dense_forward_s": 1.5} and m2["inputs"] == {"a": 1}
    assert sorted(p.name for p in store.path(key).iterdir()) == ["meta.json", "part-0000.safetensors"]
    assert _leftovers(store) == []


def test_key_is_canonical():
    assert key_of({"a": 1, "b": [1, 2]}) == key_of({"b": [1, 2], "a": 1})
    assert key_of({"a": 1}) != key_of({"a": 2})


def test_sharded_entry(tmp_path, monkeypatch):
    monkeypatch.setattr("lcc.cache.store.SHARD_BYTES", 64 * 16 * 4)  # one hidden tensor per shard
    store = TensorStore(tmp_path, "dense")
    t, meta, _ = store.get_or_create("k" * 64, {}, lambda: (_tensors(), {}))
    assert len(meta["parts"]) >= 2
    t2, _, hit = store.get_or_create("k" * 64, {}, lambda: pytest.fail("recomputed"))
    assert hit and all(torch.equal(t[k], t2[k]) for k in t)


def test_threads_racing_compute_once(tmp_path):
    store = TensorStore(tmp_path, "dense")
    calls, results = [], []

    def compute():
        calls.append(1)
        time.sleep(0.5)  # the other thread arrives while this one computes
        return _tensors(), {}

    def job():
        results.append(store.get_or_create("r" * 64, {}, compute))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1
    assert sorted(r[2] for r in results) == [False, True]
    assert all(torch.equal(results[0][0][k], results[1][0][k]) for k in results[0][0])


def test_file_checksum_is_xxh3_of_the_bytes(tmp_path):
    import xxhash

    for n in (0, 1, 5 << 20):  # empty (cannot be memory-mapped), one byte, several MiB
        data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
        (f := tmp_path / f"f{n}").write_bytes(data)
        assert file_checksum(f) == xxhash.xxh3_128(data).hexdigest()
    assert file_checksum(tmp_path / "f1") != file_checksum(tmp_path / "f0")


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (64, 16), (7, 9, 11)])
def test_pack_bits_matches_numpy_packbits_and_round_trips(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape))) > 0.4
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and np.array_equal(packed.numpy(), np.packbits(mask.numpy().ravel()))
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


def test_writability_probe_is_safe_across_threads(tmp_path):
    store = TensorStore(tmp_path, "dense")
    errors = []

    def probe():
        try:
            for _ in range(300):
                store.ensure_writable()
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=probe) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and list(store.dir.iterdir()) == []


def _race_worker(root: str, counter: str, out: str) -> None:
    store = TensorStore(root, "dense")

    def compute():
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return _tensors(), {}

    t, _, hit = store.get_or_create("p" * 64, {}, compute)
    np.save(out, t["hidden.0001"].numpy(), allow_pickle=False)


def test_processes_racing_compute_once(tmp_path):
    ctx = mp.get_context("fork")
    counter = tmp_path / "calls.txt"
    procs = [ctx.Process(target=_race_worker, args=(str(tmp_path / "c"), str(counter), str(tmp_path / f"o{i}.npy")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(counter.read_text().split()) == 1
    a, b = (np.load(tmp_path / f"o{i}.npy", allow_pickle=False) for i in range(2))
    assert np.array_equal(a, b)


def _break(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        i = len(data) - 17
        data[i] ^= 0xFF
        data[i - 100] ^= 0x55
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_corrupted_or_truncated_entry_is_recomputed(tmp_path, how, caplog):
    store = TensorStore(tmp_path, "dense")
    key = "c" * 64
    good, _, _ = store.get_or_create(key, {}, lambda: (_tensors(), {}))
    _break(store.path(key) / "part-0000.safetensors", how)
    calls = []

    def compute():
        calls.append(1)
        return _tensors(), {}

    with caplog.at_level("WARNING", logger="lcc.cache"):
        t, _, hit = store.get_or_create(key, {}, compute)
    assert not hit and calls == [1]
    assert "invalid" in caplog.text and ("checksum mismatch" in caplog.text or "truncated" in caplog.text)
    assert all(torch.equal(good[k], t[k]) for k in good)
    assert store.read(key) is not None and _leftovers(store) == []


def test_corrupted_metadata_and_failed_check_are_recomputed(tmp_path):
    store = TensorStore(tmp_path, "dense")
    key = "m" * 64
    store.get_or_create(key, {}, lambda: (_tensors(), {}))
    (store.path(key) / "meta.json").write_text("{not json")
    _, _, hit = store.get_or_create(key, {}, lambda: (_tensors(), {}))
    assert not hit
    # a check that rejects the content (e.g. other token ids) also forces a recompute
    _, _, hit = store.get_or_create(key, {}, lambda: (_tensors(1), {}), check=lambda t, m: "windows differ")
    assert not hit


def test_unwritable_cache_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")  # a folder below a file cannot be created, even by root
    store = TensorStore(blocker / "cache", "dense")
    with pytest.raises(ConfigError, match=str(blocker / "cache")) as e:
        store.get_or_create("u" * 64, {}, lambda: (_tensors(), {}))
    assert "cache.dir" in str(e.value) and "cache.enabled=false" in str(e.value)


def test_disk_full_before_write_is_a_clear_error(tmp_path, monkeypatch):
    store = TensorStore(tmp_path, "dense")

    class Usage:
        free = 10

    monkeypatch.setattr("lcc.cache.store.shutil.disk_usage", lambda p: Usage)
    with pytest.raises(OSError) as e:
        store.get_or_create("f" * 64, {}, lambda: (_tensors(), {}))
    assert e.value.errno == errno.ENOSPC and str(store.dir) in str(e.value)
    assert not store.path("f" * 64).exists() and _leftovers(store) == []


@pytest.mark.parametrize("where", ["save", "replace"])
def test_enospc_during_write_leaves_nothing(tmp_path, monkeypatch, where):
    store = TensorStore(tmp_path, "dense")

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "save":
        monkeypatch.setattr("safetensors.torch.save_file", enospc)
    else:
        monkeypatch.setattr("lcc.cache.store.os.replace", enospc)
    with pytest.raises(OSError) as e:
        store.get_or_create("e" * 64, {}, lambda: (_tensors(), {}))
    assert e.value.errno == errno.ENOSPC and str(store.dir) in str(e.value) and "cache.dir" in str(e.value)
    assert not store.path("e" * 64).exists() and _leftovers(store) == []


def test_killed_writer_leftovers_are_ignored_and_cleaned(tmp_path):
    store = TensorStore(tmp_path, "dense")
    key = "k" * 64
    tmp = store.dir / f".{key}.tmp-otherhost-123"
    tmp.mkdir(parents=True)
    (tmp / "part-0000.safetensors").write_bytes(b"half")
    assert store.read(key) is None
    _, _, hit = store.get_or_create(key, {}, lambda: (_tensors(), {}))
    assert not hit and not tmp.exists()


def test_no_pickle_anywhere_in_cache_reads(tmp_path, monkeypatch):
    store = TensorStore(tmp_path, "dense")
    store.get_or_create("n" * 64, {}, lambda: (_tensors(), {}))

    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    import pickle
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert store.read("n" * 64) is not None
    for f in (Path(__file__).resolve().parent.parent / "lcc" / "cache").glob("*.py"):
        src = f.read_text()
        assert "import pickle" not in src and "torch.load" not in src and "pickle.load" not in src, f


# ---- through lcc.job.run ---------------------------------------------------------------------------
def compose_cfg(tmp: Path, name: str, *overrides: str):
    import lcc.sweep  # noqa: F401  (registers the lcc_subdir resolver)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("sweep", overrides=["model=tiny", "logger=none", "n_docs=2", "ctx.tokens=256",
                                           "compressor=quant", f"output_dir={tmp / name}",
                                           f"++cache.dir={tmp / 'cache'}", "++cache.compressed=true",
                                           *overrides])


def _same(a: dict, b: dict) -> None:
    assert a["summary"] == b["summary"] and a["compress_info"] == b["compress_info"]


def test_job_cache_hits_give_identical_numbers(tmp_path):
    from lcc.job import run

    r1 = run(compose_cfg(tmp_path, "q256"))
    assert r1["cache"]["dense"] == "miss" and r1["cache"]["compressed"] == "miss"
    # another compressor at the same ctx: dense hit
    r2 = run(compose_cfg(tmp_path, "m256", "compressor=magnitude"))
    assert r2["cache"]["dense"] == "hit" and r2["cache"]["compressed"] == "miss"  # magnitude: weight-only, cacheable
    # the same compressor at another ctx: compressed hit, dense miss
    r3 = run(compose_cfg(tmp_path, "q512", "ctx.tokens=512"))
    assert r3["cache"] == {**r3["cache"], "dense": "miss", "compressed": "hit"}
    assert r3["timings"]["compress_s"] == pytest.approx(r1["timings"]["compress_s"])  # the original time
    # both hits at once, and a cache-free run: all numbers identical
    r4 = run(compose_cfg(tmp_path, "q512b", "ctx.tokens=512"))
    assert r4["cache"]["dense"] == "hit" and r4["cache"]["compressed"] == "hit"
    r5 = run(compose_cfg(tmp_path, "q512c", "ctx.tokens=512", "++cache.enabled=false"))
    assert r5["cache"] == {"dense": "off", "compressed": "off"}
    _same(r3, r5)
    _same(r4, r5)
    r6 = run(compose_cfg(tmp_path, "m256c", "compressor=magnitude", "++cache.enabled=false"))
    _same(r2, r6)
    saved = json.loads((tmp_path / "q512b" / "result.json").read_text())
    assert saved["cache"]["compressed"] == "hit"


def test_job_lm_head_compressor_with_dense_hit(tmp_path):
    from lcc.job import run

    run(compose_cfg(tmp_path, "a"))
    over = ["compressor.targets.lm_head=true"]
    r = run(compose_cfg(tmp_path, "b", *over))
    assert r["cache"]["dense"] == "hit"
    r_ref = run(compose_cfg(tmp_path, "c", *over, "++cache.enabled=false"))
    _same(r, r_ref)


def test_job_recomputes_a_corrupted_dense_entry(tmp_path):
    from lcc.job import run

    r1 = run(compose_cfg(tmp_path, "a"))
    entry = tmp_path / "cache" / "dense" / r1["cache"]["dense_key"]
    _break(entry / "part-0000.safetensors", "flip")
    r2 = run(compose_cfg(tmp_path, "b"))
    assert r2["cache"]["dense"] == "miss"
    _same(r1, r2)
    r3 = run(compose_cfg(tmp_path, "c"))
    assert r3["cache"]["dense"] == "hit"


def test_job_unwritable_cache_dir_fails_clearly(tmp_path):
    from lcc.job import run

    (tmp_path / "blocker").write_text("x")
    cfg = compose_cfg(tmp_path, "a", f"++cache.dir={tmp_path / 'blocker' / 'c'}")
    with pytest.raises(ConfigError, match="blocker"):
        run(cfg)
    res = json.loads((tmp_path / "a" / "result.json").read_text())
    assert res["status"] == "failed" and "cache.dir" in res["error"]


def test_job_calibrated_compressor_is_cached_per_calibration(tmp_path):
    from lcc.job import run

    cal = ["compressor=wanda", "calib.n_samples=2", "calib.seqlen=64", "++cache.compressed=auto"]
    r1 = run(compose_cfg(tmp_path, "a", *cal))
    r2 = run(compose_cfg(tmp_path, "b", *cal, "ctx.tokens=512"))
    assert (r1["cache"]["compressed"], r2["cache"]["compressed"]) == ("miss", "hit")
    _same(r2, run(compose_cfg(tmp_path, "c", *cal, "ctx.tokens=512", "++cache.enabled=false")))
    # other calibration data -> another entry
    r4 = run(compose_cfg(tmp_path, "d", *cal[:-1], "calib.seqlen=32"))
    assert r4["cache"]["compressed"] == "miss" and r4["cache"]["compressed_key"] != r1["cache"]["compressed_key"]


def test_auto_policy(tmp_path):
    """auto: calibrated compressors and masks everywhere; data-free quantizers only where a hit pays (a CPU)."""
    from lcc.cache import settings
    from lcc.compressors import build
    from lcc.job import run

    auto = "++cache.compressed=auto"  # the default of lcc/conf/sweep.yaml
    caches = settings({"cache": {"compressed": "auto"}})
    quant, gptq, mag = build({"name": "quant"}), build({"name": "gptq"}), build({"name": "magnitude"})
    assert [caches.cache_compressed(c, "cuda") for c in (quant, gptq, mag)] == [False, True, True]
    assert [caches.cache_compressed(c, "cpu") for c in (quant, gptq, mag)] == [True, True, True]
    assert not caches.cache_compressed(build({"name": "kv"}), "cpu")
    r0 = run(compose_cfg(tmp_path, "q", auto, "device=cpu"))
    assert r0["cache"]["dense"] == "miss" and r0["cache"]["compressed"] == "miss"  # a CPU job: integer codes
    r1 = run(compose_cfg(tmp_path, "q2", auto, "device=cpu", "ctx.tokens=512"))
    assert r1["cache"]["compressed"] == "hit" and r1["cache"]["compressed_key"] == r0["cache"]["compressed_key"]
    r2 = run(compose_cfg(tmp_path, "k", auto, "compressor=kv"))
    assert r2["cache"]["compressed"] == "uncacheable"
    r3 = run(compose_cfg(tmp_path, "g", auto, "compressor=gptq", "calib.n_samples=2", "calib.seqlen=64"))
    entries = {d.name for d in (tmp_path / "cache" / "compressed").iterdir() if d.is_dir()}
    assert r3["cache"]["compressed"] == "miss" and entries == {r0["cache"]["compressed_key"],
                                                              r3["cache"]["compressed_key"]}
    r4 = run(compose_cfg(tmp_path, "off", "++cache.compressed=false", "device=cpu"))
    assert r4["cache"] == {"dense": "hit", "compressed": "off", "dir": str(tmp_path / "cache"),
                           "dense_key": r0["cache"]["dense_key"]}


@pytest.mark.parametrize("bad", ["sometimes", "1", "0.5"])
def test_bad_compressed_policy_is_a_config_error(tmp_path, bad):
    from lcc.job import validate

    with pytest.raises(ConfigError, match=rf"cache.compressed='?{re.escape(bad)}'? is invalid; valid: auto.*true.*false"):
        validate(compose_cfg(tmp_path, "x", f"++cache.compressed={bad}"))


@pytest.mark.parametrize("comp", [["compressor=magnitude"], ["compressor=random", "compressor.sparsity=0.3"],
                                  ["compressor=compose", "compressor.stages=[{name: magnitude, sparsity: 0.2},"
                                                         "{name: random, sparsity: 0.1}]"]])
def test_masking_pruners_store_one_bit_per_weight(tmp_path, comp):
    from lcc.compressors.base import Targets, target_linears
    from lcc.job import run
    from lcc.models import load_model

    r1 = run(compose_cfg(tmp_path, "a", "++cache.compressed=auto", *comp))
    r2 = run(compose_cfg(tmp_path, "b", "++cache.compressed=auto", *comp, "ctx.tokens=512"))
    assert (r1["cache"]["compressed"], r2["cache"]["compressed"]) == ("miss", "hit")
    _same(r2, run(compose_cfg(tmp_path, "c", *comp, "ctx.tokens=512", "++cache.enabled=false")))
    cfg = compose_cfg(tmp_path, "x")
    model, _, _ = load_model(cfg.model, torch.device("cpu"), torch.float32)
    lins = target_linears(model, Targets())
    found = TensorStore(tmp_path / "cache", "compressed").read(r1["cache"]["compressed_key"])
    assert found is not None and found[1]["inputs"]["encoding"] == "keep_bits"
    tensors = found[0]
    assert set(tensors) == {f"{n}.weight.keep" for n in lins}
    assert all(t.dtype == torch.uint8 and t.numel() == (lins[k[:-len(".weight.keep")]].weight.numel() + 7) // 8
               for k, t in tensors.items())
    kept = sum(int(unpack_bits(t, (t.numel() * 8,)).sum()) for t in tensors.values())
    total = sum(lin.weight.numel() for lin in lins.values())
    assert kept / total == pytest.approx(1 - r1["compress_info"]["sparsity_achieved"], abs=1e-6)


def test_fingerprinted_sources_say_so():
    """Every file whose source goes into a cache key (``source_fingerprint(...)`` anywhere in lcc, files and the
    modules of its ``functions``) says so in its first docstring line: editing it invalidates cached entries."""
    import ast
    import importlib

    import lcc

    root = Path(lcc.__file__).resolve().parent
    named: set[Path] = set()
    for path in root.rglob("*.py"):
        calls = [n for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "source_fingerprint"]
        if not calls:
            continue
        parts = path.relative_to(root.parent).with_suffix("").parts
        mod = importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        for call in calls:
            for a in call.args:  # files and packages, relative to lcc/
                p = root / a.value
                named |= set(p.rglob("*.py")) if p.is_dir() else {p}
            for kw in call.keywords:  # functions=(...): the files that define them
                if kw.arg == "functions":
                    named |= {Path(importlib.import_module(getattr(mod, e.id).__module__).__file__)
                              for e in kw.value.elts}
    assert {root / "models.py", root / "forward.py", root / "compressors" / "gptq.py"} <= named
    silent = [str(p.relative_to(root)) for p in sorted(named)
              if not (ast.get_docstring(ast.parse(p.read_text())) or "").startswith("Fingerprinted: editing this file")]
    assert silent == []
