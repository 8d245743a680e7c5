"""Hydra's basic sweeper, plus lcc's own checks of every job *before* any job is launched.

It also sweeps a *union of grids*: ``hydra.sweeper.grid`` is a list of override mappings, each expanded
as its own Cartesian product (``{compressor: magnitude, compressor.sparsity: "0.1,0.5"}``), with the
command line's overrides applied to every grid (a key given on the command line replaces the grid's).
The study's experiment configs use it, since its grid is not one product.

Hydra already composes each job's config up front (unknown keys fail there). This sweeper also runs
``lcc.validate.validate`` (every key, no model loaded) on each composed config, reports every bad job in one error, and writes the
sweep's job manifest ``lcc_jobs.json`` (overrides and folder of each job) so that ``lcc.reduce`` can
list jobs that are missing, not only those that failed.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict


@dataclass
class LccSweeperConf:
    _target_: str = "hydra_plugins.lcc_sweeper.lcc_sweeper.LccSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[dict] = None
    grid: Optional[List[Dict[str, Any]]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="lcc", node=LccSweeperConf, provider="lcc")


class LccSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None,
                 grid: Optional[List[Dict[str, Any]]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grid = [dict(g) for g in grid] if grid else []
        self._n_validated = 0

    def sweep(self, arguments: List[str]) -> Any:
        if not self.grid:
            return super().sweep(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        cli = parser.parse_overrides(list(arguments))
        cli_keys = {o.key_or_group for o in cli}
        jobs: List[List[str]] = []
        for entry in self.grid:
            lines = [f"{k}={v}" for k, v in entry.items() if k not in cli_keys] + list(arguments)
            for batch in self.split_arguments(parser.parse_overrides(lines), None):
                jobs += [list(j) for j in batch]
        size = self.max_batch_size or len(jobs)
        batches = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        # The basic sweeper's loop over prepared batches (its _parse/split step replaced by the grid's).
        super_split = self.split_arguments
        self.split_arguments = lambda overrides, max_batch_size: batches  # type: ignore[method-assign]
        try:
            return super().sweep([])
        finally:
            self.split_arguments = super_split  # type: ignore[method-assign]

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        import lcc.sweep  # registers the lcc_subdir resolver
        from lcc import ConfigError
        from lcc.io import read_json, write_json
        from lcc.validate import problems

        loader = self.hydra_context.config_loader
        errors, jobs = [], []
        for i, overrides in enumerate(batch):
            cfg = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(overrides))
            num = self._n_validated + i
            with open_dict(cfg):
                cfg.hydra.job.num = num
                cfg.output_dir = "-"  # not known before launch; validate() does not need it
            found = problems(cfg)
            if len(found) == 1:
                errors.append(f"  job {num} [{' '.join(overrides)}]: {found[0]}")
            elif found:
                errors.append(f"  job {num} [{' '.join(overrides)}]:\n" + "\n".join(f"    - {x}" for x in found))
            subdir = OmegaConf.select(cfg, "hydra.sweep.subdir")
            jobs.append({"num": num, "overrides": list(overrides), "dir": subdir})
        if errors:
            raise ConfigError(f"{len(errors)} of {len(batch)} jobs have invalid configs; nothing was launched:\n"
                              + "\n".join(errors))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        manifest = sweep_dir / "lcc_jobs.json"
        # Earlier launches into the same sweep dir (a resumed or extended sweep) stay listed.
        old = read_json(manifest)["jobs"] if manifest.exists() else []
        new_dirs = {j["dir"] for j in jobs}
        write_json(manifest, {"jobs": [j for j in old if j["dir"] not in new_dirs] + jobs})
        self._n_validated += len(batch)
        lcc.sweep.LAST_SWEEP_DIR = sweep_dir
