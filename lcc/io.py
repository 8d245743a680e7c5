"""Atomic file writes (temp file in the same folder + fsync + rename): a reader never sees a partial file."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _clean(o: Any) -> Any:
    """JSON has no NaN/Infinity: store them as null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json(path: str | Path, obj: Any) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(_clean(obj), f, indent=2, default=str, allow_nan=False)
    return atomic_write(path, w)


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_parquet(path: str | Path, df) -> Path:
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_safetensors(path: str | Path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
