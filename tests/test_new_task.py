"""A new kind of job is one module in lcc/tasks/ with nothing else to edit (as tests/test_contract.py checks for
compressors): copy the package, add one task module, and it is a Hydra config option (``task=<name>``, from its
fields), validated before launch, runs in a sweep on the shared job context (the result carries the common
entries) and is reported by reduce through its own ``reporter``."""
from __future__ import annotations

import json

import pytest

from tests.helpers import package_with_module

NEW_TASK = '''
"""task=last_token: top-1 agreement and KL of the next-token distribution at the last position of n windows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import torch

from lcc import ConfigError
from lcc.data import eval_windows
from lcc.io import atomic_write, read_json, write_parquet
from lcc.tasks.base import Task


def report(sweep_dir: Path, jobs: pd.DataFrame, plots: bool = True):
    rows = [{"job": j, **read_json(sweep_dir / j / "result.json")["summary"]} for j in jobs.job]
    df = pd.DataFrame(rows).sort_values("job")
    path = atomic_write(sweep_dir / "last_token.csv", lambda tmp: df.to_csv(tmp, index=False))
    return ["## Last token", "", df.to_markdown(index=False), ""], [path]


@dataclass
class LastToken(Task):
    name: ClassVar[str] = "last_token"
    family: ClassVar[str] = "last_token"
    reporter: ClassVar = staticmethod(report)
    n: int = 2

    def check(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= 8:
            raise ConfigError(f"task.n={self.n!r} is invalid; valid: an integer 1..8")

    def prepare(self, job):
        return eval_windows(job.cfg.data, job.tokenizer, job.ctx, self.n, job.seed)

    def probe_ids(self, job):
        return job.inputs

    @torch.no_grad()
    def run(self, job):
        last = lambda: torch.stack([job.model(w[None]).logits[0, -1].float() for w in job.inputs])  # noqa: E731
        dense = last().log_softmax(-1)
        job.compress()
        comp = last().log_softmax(-1)
        kl = (dense.exp() * (dense - comp)).sum(-1)
        write_parquet(job.out / "last.parquet", pd.DataFrame({"kl": kl.numpy()}))
        return {"summary": {"kl_last": kl.mean().item(),
                            "agree_last": (dense.argmax(-1) == comp.argmax(-1)).float().mean().item()},
                "files": ["last.parquet"]}

    @classmethod
    def done_line(cls, result):
        return f"last_token {result['compressor']} {result['level']}  KL {result['summary']['kl_last']:.4g}"
'''


@pytest.mark.slow
def test_a_new_task_is_one_module(tmp_path):
    run = package_with_module(tmp_path, "tasks/last_token.py", NEW_TASK)

    def sweep(*args):
        return run("lcc.sweep", "-m", "model=tiny", "ctx.tokens=128", "logger=none", "cache.enabled=false",
                   "task=last_token", *args)

    bad = sweep("task.n=2,9", "compressor=quant", f"hydra.sweep.dir={tmp_path / 'bad'}")
    assert bad.returncode != 0 and "nothing was launched" in bad.stderr, bad.stderr[-3000:]
    assert "task.n=9 is invalid; valid: an integer 1..8" in bad.stderr
    assert not list((tmp_path / "bad").glob("*/result.json"))

    p = sweep("compressor=quant", "compressor.bits=2,8", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert p.returncode == 0, p.stderr[-3000:]
    res = {r["level"]: r for r in (json.loads(f.read_text()) for f in (tmp_path / "sweep").glob("*/result.json"))}
    assert set(res) == {"w2g128", "w8g128"} and all(r["status"] == "ok" for r in res.values())
    assert res["w2g128"]["summary"]["kl_last"] > res["w8g128"]["summary"]["kl_last"] > 0
    for r in res.values():  # the entries every result carries, from the job context
        assert r["task"] == "last_token" and r["task_params"] == {"n": 2} and r["ctx"] == 128
        assert r["weights"]["targeted_linears"] == r["weights"]["changed_linears"] > 0
        assert {"load_s", "data_s", "compress_s", "total_s"} <= set(r["timings"])
        assert r["cache"] == {"dense": "off", "compressed": "off"} and "torch" in r["versions"]
        assert r["files"] == ["last.parquet"] and list(r["checksums"]) == ["last.parquet"]
    red = run("lcc.reduce", str(tmp_path / "sweep"), "--no-plots", timeout=300)
    assert red.returncode == 0, red.stdout + red.stderr
    assert "## Last token" in red.stdout and "2 jobs: 2 ok" in red.stdout
    assert len((tmp_path / "sweep" / "last_token.csv").read_text().splitlines()) == 3
