"""The content-addressed tensor store under a cache root: one kind of entry per folder (``dense``,
``compressed``), one entry per key (see docs/caching.md).

An entry is a directory ``<kind>/<key>/`` holding ``part-NNNN.safetensors`` shards and ``meta.json``
(xxh3-128 checksum + size of every shard, name/dtype/shape of every tensor, the key's inputs, facts such as the
original compute time). It is written into a temporary directory and renamed into place in one step, so
an entry is either complete or absent. Only safetensors and JSON are read: nothing is ever unpickled.
A ``<key>.lock`` FileLock makes jobs that start together compute an entry once: the first computes, the
others wait and then read. A read that fails any check (missing/truncated/corrupted shard, checksum,
metadata, shapes, a caller's check such as token ids) is logged, the entry deleted and recomputed: a bad
entry is never trusted.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from filelock import FileLock, Timeout

from lcc import ConfigError
from lcc.io import WRITE_ERRNOS, as_os_error, file_checksum, umask

log = logging.getLogger(__name__)

FORMAT = 2
#: a shard holds at most this many bytes (bounds the host memory a write needs)
SHARD_BYTES = 1 << 30


class InvalidEntry(Exception):
    """A cache entry that failed a check on read."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def key_of(inputs: dict) -> str:
    """The content address of an entry: sha256 of the canonical JSON of everything its tensors depend on."""
    return hashlib.sha256(canonical_json(inputs).encode()).hexdigest()




def _tensor_table(tensors: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: [str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in tensors.items()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(e: OSError, where: Path) -> OSError:
    """An OSError whose message names the cache folder and how to get out of the situation."""
    return OSError(e.errno, f"cannot write the lcc cache at {where}: {e.strerror or e}. Free space or fix "
                            f"permissions there, move the cache (cache.dir=<folder> or LCC_CACHE=<folder>), "
                            f"or turn it off (cache.enabled=false)")


class TensorStore:
    """One kind of entry (``dense``, ``compressed``...) under a cache root."""

    def __init__(self, root: str | Path, kind: str):
        self.root = Path(root)
        self.dir = self.root / kind
        self.kind = kind

    def path(self, key: str) -> Path:
        return self.dir / key

    # ---- checks ------------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Raise ConfigError naming the folder if entries cannot be created there."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # unique per call: threads of one process (and processes on several hosts) probe at once
            probe = self.dir / f".probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(
                f"cache.dir={self.root} is not usable: cannot write to {self.dir} ({type(e).__name__}: {e}). "
                f"Set cache.dir=<writable folder> (or LCC_CACHE=<folder>), or cache.enabled=false") from e

    def check_space(self, nbytes: int) -> None:
        try:
            free = shutil.disk_usage(self.dir).free
        except OSError as e:
            raise write_error(e, self.dir) from e
        if nbytes > free:
            raise OSError(errno.ENOSPC, f"cannot write the lcc cache at {self.dir}: the entry needs "
                                        f"{nbytes / 2**20:.0f} MiB, only {free / 2**20:.0f} MiB are free. Free space, "
                                        f"move the cache (cache.dir=<folder> or LCC_CACHE=<folder>), or turn it off "
                                        f"(cache.enabled=false)")

    # ---- read --------------------------------------------------------------------------------------
    def read(self, key: str, check: Callable[[dict, dict], str | None] | None = None,
             delete_bad: bool = False) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The entry's tensors and metadata if it exists and passes every check, else None.
        ``check(tensors, meta)`` returns a reason to reject the entry (e.g. token ids differ) or None."""
        from safetensors.torch import load_file

        d = self.path(key)
        meta_path = d / "meta.json"
        if not meta_path.exists():
            return None
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get("format") != FORMAT or meta.get("key") != key:
                raise InvalidEntry(f"meta.json is for format {meta.get('format')} key {meta.get('key')}")
            tensors: dict[str, torch.Tensor] = {}
            for part in meta["parts"]:
                p = d / part["file"]
                size = p.stat().st_size
                if size != part["size"]:
                    raise InvalidEntry(f"{p.name} has {size} bytes, expected {part['size']} (truncated?)")
                if file_checksum(p) != part["xxh3_128"]:
                    raise InvalidEntry(f"{p.name}: checksum mismatch (corrupted)")
                tensors.update(load_file(p))
            if _tensor_table(tensors) != meta["tensors"]:
                raise InvalidEntry("tensor names/dtypes/shapes differ from meta.json")
            if check is not None and (reason := check(tensors, meta)):
                raise InvalidEntry(reason)
        except Exception as e:  # noqa: BLE001 - any failure means: do not trust this entry
            if delete_bad:
                log.warning("cache %s entry %s is invalid (%s): deleting it and recomputing", self.kind, d, e)
                self.remove(key)
            else:
                log.info("cache %s entry %s not readable without the lock (%s)", self.kind, d, e)
            return None
        return tensors, meta

    # ---- write -------------------------------------------------------------------------------------
    def _tmp_prefix(self, key: str) -> str:
        return f".{key}.tmp-"

    def _clean_tmp(self, key: str) -> None:
        """Under the entry's lock, any temporary folder of this key was left by a killed writer."""
        for p in self.dir.glob(self._tmp_prefix(key) + "*"):
            log.info("removing %s left by an interrupted cache write", p)
            shutil.rmtree(p, ignore_errors=True)

    def write(self, key: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
        """Write the entry atomically (call with the entry's lock held). Returns the stored metadata."""
        from safetensors.torch import save_file

        final = self.path(key)
        tmp = self.dir / f"{self._tmp_prefix(key)}{socket.gethostname()}-{os.getpid()}"
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        try:
            self.check_space(nbytes)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            parts: list[dict] = []
            names = list(tensors)
            i = 0
            while i < len(names) or not parts:
                shard: dict[str, torch.Tensor] = {}
                size = 0
                while i < len(names) and (not shard or size + tensors[names[i]].numel()
                                          * tensors[names[i]].element_size() <= SHARD_BYTES):
                    t = tensors[names[i]]
                    shard[names[i]] = t.detach().contiguous().cpu()
                    size += t.numel() * t.element_size()
                    i += 1
                p = tmp / f"part-{len(parts):04d}.safetensors"
                save_file(shard, str(p), metadata={"lcc_key": key, "lcc_kind": self.kind})
                os.chmod(p, 0o666 & ~umask())  # safetensors creates its files 0600: a shared cache must be readable
                del shard
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
                parts.append({"file": p.name, "size": p.stat().st_size, "xxh3_128": file_checksum(p)})
            stored = {**meta, "format": FORMAT, "kind": self.kind, "key": key, "parts": parts,
                      "tensors": _tensor_table(tensors), "bytes": nbytes, "created": time.time(),
                      "host": socket.gethostname()}
            with open(tmp / "meta.json", "w") as f:
                f.write(json.dumps(stored, indent=1, sort_keys=True, default=str))
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            if final.exists():
                self.remove(key)
            os.replace(tmp, final)  # the entry appears complete, or not at all
            _fsync_dir(self.dir)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            # safetensors reports a full disk as SafetensorError("... os error 28"), not as an OSError
            err = as_os_error(e) if isinstance(e, Exception) else None
            if err is not None and err.errno in WRITE_ERRNOS and "lcc cache" not in str(e):
                raise write_error(err, self.dir) from e
            raise
        return stored

    def remove(self, key: str) -> None:
        """Delete an entry (moved aside first, so that it disappears in one step)."""
        d = self.path(key)
        if not d.exists():
            return
        trash = self.dir / f".{key}.trash-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        try:
            os.replace(d, trash)
        except OSError:
            trash = d
        shutil.rmtree(trash, ignore_errors=True)

    # ---- the one entry point -----------------------------------------------------------------------
    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        lock = FileLock(str(self.dir / f"{key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for cache %s entry %s: another job is computing it", self.kind, key[:16])
            t = time.perf_counter()
            lock.acquire()
            log.info("cache %s lock acquired after %.1fs", self.kind, time.perf_counter() - t)
        try:
            yield
        finally:
            lock.release()

    def get_or_create(self, key: str, inputs: dict,
                      compute: Callable[[], tuple[dict[str, torch.Tensor], dict]],
                      check: Callable[[dict, dict], str | None] | None = None
                      ) -> tuple[dict[str, torch.Tensor], dict, bool]:
        """``(tensors, meta, hit)``: the entry if a valid one exists, else ``compute()`` -> (tensors, facts)
        stored under ``key`` (facts and ``inputs`` go into meta.json). Computed at most once at a time
        across processes and hosts sharing the folder."""
        found = self.read(key, check)  # lock-free fast path: many jobs may read one entry at once
        if found is not None:
            return found[0], found[1], True
        self.ensure_writable()
        with self.locked(key):
            self._clean_tmp(key)
            found = self.read(key, check, delete_bad=True)
            if found is not None:
                return found[0], found[1], True
            tensors, facts = compute()
            meta = self.write(key, tensors, {"facts": facts, "inputs": inputs})
            return tensors, meta, False
