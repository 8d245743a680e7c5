"""Hydra's basic sweeper, plus lcc's own checks of every job *before* any job is launched.

Hydra already composes each job's config up front (unknown keys fail there). This sweeper also runs
``lcc.job.validate`` on each composed config, reports every bad job in one error, and writes the
sweep's job manifest ``lcc_jobs.json`` (overrides and folder of each job) so that ``lcc.reduce`` can
list jobs that are missing, not only those that failed.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf, open_dict


@dataclass
class LccSweeperConf:
    _target_: str = "hydra_plugins.lcc_sweeper.lcc_sweeper.LccSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[dict] = None


ConfigStore.instance().store(group="hydra/sweeper", name="lcc", node=LccSweeperConf, provider="lcc")


class LccSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self._n_validated = 0

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        import lcc.sweep  # registers the lcc_subdir resolver
        from lcc import ConfigError
        from lcc.io import read_json, write_json
        from lcc.job import validate

        loader = self.hydra_context.config_loader
        errors, jobs = [], []
        for i, overrides in enumerate(batch):
            cfg = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(overrides))
            num = self._n_validated + i
            with open_dict(cfg):
                cfg.hydra.job.num = num
                cfg.output_dir = "-"  # not known before launch; validate() does not need it
            try:
                validate(cfg)
            except ConfigError as e:
                errors.append(f"  job {num} [{' '.join(overrides)}]: {e}")
            subdir = OmegaConf.select(cfg, "hydra.sweep.subdir")
            jobs.append({"num": num, "overrides": list(overrides), "dir": subdir})
        if errors:
            raise ConfigError(f"{len(errors)} of {len(batch)} jobs have invalid configs; nothing was launched:\n"
                              + "\n".join(errors))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        manifest = sweep_dir / "lcc_jobs.json"
        old = read_json(manifest)["jobs"] if self._n_validated and manifest.exists() else []
        write_json(manifest, {"jobs": old + jobs})
        self._n_validated += len(batch)
        lcc.sweep.LAST_SWEEP_DIR = sweep_dir
