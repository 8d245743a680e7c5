"""Entry point: ``python -m lcc.sweep [-m] key=value ...`` (Hydra). A thin shell around ``lcc.job.run``."""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import lcc.compressors  # noqa: F401  (stores compressor=<name> in Hydra's ConfigStore)
import lcc.tasks  # noqa: F401  (stores task=<name>)
from lcc.config import override_exclude_keys  # (and stores every other group's schema)
from lcc.job import run

CONF_DIR = str(Path(__file__).resolve().parent / "conf")
log = logging.getLogger("lcc")


def job_subdir(override_dirname: str, num: int) -> str:
    """A job's folder name inside the sweep: its overrides (stable across re-launches, so a resumed
    sweep finds its finished jobs), made path-safe and short; ``job<num>`` when there are none."""
    name = override_dirname.replace("/", "_").replace(os.sep, "_") or f"job{num}"
    if len(name) > 180:
        name = name[:160] + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def folder_collisions(jobs: list[dict]) -> list[str]:
    """Jobs of one launch that would share a folder though their configs differ (``{"num", "overrides", "dir",
    "config_hash"}`` each): ``job_subdir`` writes ``/`` as ``_``, so ``data.paths=/d/a.txt`` and ``/d_a.txt``
    name the same folder, where one job's result would overwrite the other's. One line per shared folder."""
    by_dir: dict[str, list[dict]] = {}
    for j in jobs:
        by_dir.setdefault(j["dir"], []).append(j)
    out = []
    for d, js in by_dir.items():
        if len({j["config_hash"] for j in js}) > 1:
            which = "; ".join(f"job {j['num']} [{' '.join(j['overrides'])}]" for j in js)
            out.append(f"  folder {d!r} would be shared by jobs with different configs: {which}")
    return out


if not OmegaConf.has_resolver("lcc_subdir"):
    OmegaConf.register_new_resolver("lcc_subdir", lambda d, n: job_subdir(str(d), int(n)))
if not OmegaConf.has_resolver("lcc_override_exclude_keys"):  # one definition: lcc.config.VOLATILE_KEYS
    OmegaConf.register_new_resolver("lcc_override_exclude_keys", override_exclude_keys)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sweep")
def main(cfg: DictConfig) -> float | None:
    res = run(cfg)
    return res.get("summary", {}).get("kl_mean")


def cli() -> None:
    """The ``lcc-sweep`` console command (same as ``python -m lcc.sweep``; Hydra's tab completion works with
    it: ``eval "$(lcc-sweep -sc install=bash)"``). In a multirun, the lcc sweeper prints the sweep's status
    line and reduces it when the launcher is done."""
    main()


if __name__ == "__main__":
    sys.exit(cli())
