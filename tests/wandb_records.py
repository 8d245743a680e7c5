"""Read an offline W&B run back through wandb's own record format, to assert on what a run holds.

A ``.wandb`` file is wandb's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
32 KiB blocks of LevelDB-log chunks (crc32 4 bytes, length 2, type 1: full/first/middle/last), each record a
``wandb.proto.wandb_internal_pb2.Record``. wandb's Go core writes it, and the wandb package (0.31 here) ships
no Python reader of it any more, so this is that reader (checksums verified as wandb's own writer computes them: crc32 seeded by the type byte).
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    out, pending, off = [], b"", HEADER
    while off + HEADER <= len(data):
        room = BLOCK - off % BLOCK
        if room < HEADER:  # block trailer: zero padding
            off += room
            continue
        crc, length, kind = struct.unpack("<IHB", data[off:off + HEADER])
        if length == 0 and kind == 0:  # zero-filled rest of a block
            off += room
            continue
        chunk = data[off + HEADER:off + HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad checksum at {off}"
        off += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
        else:
            raise AssertionError(f"unknown chunk type {kind} at {off}")
    return out


def records(path: Path) -> list[pb.Record]:
    out = []
    for raw in raw_records(path):
        r = pb.Record()
        r.ParseFromString(raw)
        out.append(r)
    return out


class OfflineRun:
    """What one offline run holds: run (config, tags, job_type, group), metric definitions, history rows,
    summary, artifacts."""

    def __init__(self, run_dir: Path):
        files = list(Path(run_dir).glob("*.wandb"))
        assert len(files) == 1, files
        self.records = records(files[0])
        kinds = [r.WhichOneof("record_type") for r in self.records]
        runs = [r.run for r in self.records if r.WhichOneof("record_type") == "run"]
        assert runs, kinds
        self.run = runs[0]
        self.config = {u.key: json.loads(u.value_json) for r in runs for u in r.config.update}
        for r in self.records:
            if r.WhichOneof("record_type") == "config":
                self.config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        self.metrics = {r.metric.glob_name or r.metric.name: r.metric for r in self.records
                        if r.WhichOneof("record_type") == "metric"}
        self.history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                        for r in self.records if r.WhichOneof("record_type") == "history"]
        self.summary: dict = {}
        for r in self.records:
            if r.WhichOneof("record_type") == "summary":
                for u in r.summary.update:
                    self.summary[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
        self.artifacts = [r.artifact for r in self.records if r.WhichOneof("record_type") == "artifact"]
        self.kinds = kinds

    @property
    def tags(self) -> list[str]:
        return list(self.run.tags)


def offline_runs(root: Path) -> list[Path]:
    return sorted(Path(root).glob("wandb/offline-run-*"))
