"""lcc's sweeper: Hydra's grid sweep, plus lcc's checks of every job *before* any job is launched, and the
end of the sweep (status line, reduce) once the launcher is done.

Jobs: the Cartesian product of the sweep overrides (``compressor=quant,magnitude ctx=1k,2k``), as Hydra's
basic sweeper makes it. It also sweeps a *union of grids*: ``hydra.sweeper.grid`` is a list of override
mappings, each expanded as its own product (``{compressor: magnitude, compressor.sparsity: "0.1,0.5"}``),
with the command line's overrides applied to every grid (a key given on the command line replaces the
grid's). The study's experiment configs use it, since its grid is not one product.

Before launching anything, every job's config (of every batch) is composed (unknown keys fail there) and
checked by ``lcc.validate`` (every key, no model loaded); every bad job is reported, with all its problems, in
one error and nothing is launched. The sweep's job manifest ``lcc_jobs.json`` (overrides and folder of each
job) lets ``lcc.reduce`` list missing jobs too.

After the launcher returns (any launcher: basic, submitit_local, submitit_slurm), or fails, the sweeper
prints one line counting ok / failed / missing jobs and, unless ``hydra.sweeper.reduce=false``, reduces the
sweep directory (tables, tidy curves, figures; a W&B reduce run when the jobs logged to W&B).
"""


import itertools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class LccSweeperConf:
    _target_: str = "hydra_plugins.lcc_sweeper.lcc_sweeper.LccSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    grid: Optional[List[Dict[str, Any]]] = None
    reduce: bool = True   # reduce the sweep dir when the sweep ends (tables, figures, W&B reduce run)


ConfigStore.instance().store(group="hydra/sweeper", name="lcc", node=LccSweeperConf, provider="lcc")


def expand(overrides: List[Override]) -> List[List[str]]:
    """The jobs of one grid: the Cartesian product of the overrides' values (a later override of the same
    key replaces an earlier one), as ``key=value`` lists."""
    axes: Dict[str, List[str]] = {}
    for o in overrides:
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise HydraException(f"lcc sweeper: {key}: only lists and ranges can be swept, not "
                                     f"{o.value_type.name if o.value_type else o}")
            axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            axes[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*axes.values())]


class LccSweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None,
                 grid: Optional[List[Dict[str, Any]]] = None, reduce: bool = True) -> None:
        super().__init__()
        if max_batch_size is not None and max_batch_size < 1:
            raise HydraException(f"hydra.sweeper.max_batch_size={max_batch_size} is invalid; valid: null or >= 1")
        if not isinstance(reduce, bool):
            raise HydraException(f"hydra.sweeper.reduce={reduce!r} is invalid; valid: true, false")
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.grid = [dict(g) for g in grid] if grid else []
        self.reduce = reduce
        self._n_validated = 0
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def jobs(self, arguments: List[str]) -> List[List[str]]:
        """Every job's overrides: the product of ``params`` + arguments, or the union of the grids."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        if not self.grid:
            return expand(parser.parse_overrides(lines))
        cli_keys = {o.key_or_group for o in parser.parse_overrides(lines)}
        jobs: List[List[str]] = []
        for entry in self.grid:
            jobs += expand(parser.parse_overrides([f"{k}={v}" for k, v in entry.items() if k not in cli_keys]
                                                  + lines))
        # grids that differ only in a key the command line replaced give the same job: run it once
        return [list(j) for j in dict.fromkeys(tuple(j) for j in jobs)]

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        jobs = self.jobs(arguments)
        size = self.max_batch_size or max(len(jobs), 1)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        self.validate_batch_is_legal(jobs)  # every job of every batch, before the first batch launches
        sweep_dir.mkdir(parents=True, exist_ok=True)  # after it: a refused sweep leaves no folder behind
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: List[Sequence[JobReturn]] = []
        launched = False
        try:
            for start in range(0, len(jobs), size):
                batch = jobs[start:start + size]
                launched = True
                results = self.launcher.launch(batch, initial_job_idx=start)
                for r in results:
                    _ = r.return_value  # raises a failed job's exception (after the whole batch ran)
                returns.append(results)
        finally:
            if launched:
                self.end_of_sweep(sweep_dir, interrupted=isinstance(sys.exc_info()[1], KeyboardInterrupt))
        return returns

    def end_of_sweep(self, sweep_dir: Path, interrupted: bool = False) -> None:
        """One status line; then the sweep's tables, figures and (if its jobs logged to W&B) reduce run."""
        from lcc.reduce import collect, reduce, status_line

        try:
            status = status_line(collect(sweep_dir))
            where = f"python -m lcc.reduce {sweep_dir}"
            if self.reduce and not interrupted:
                reduce(sweep_dir, wandb="auto")
                where = f"{sweep_dir / 'sensitivity.md'}, figures in {sweep_dir / 'plots'}"
            print(f"lcc sweep {sweep_dir}: {status}. Tables: {where}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - the jobs' own results are complete; say so and carry on
            log.warning("end of sweep: reduce of %s failed (%s: %s); the jobs' results are complete, "
                        "run python -m lcc.reduce %s", sweep_dir, type(e).__name__, e, sweep_dir)
            print(f"lcc sweep {sweep_dir}: reduce failed ({type(e).__name__}: {e})", file=sys.stderr)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        import lcc.sweep  # noqa: F401  (registers the lcc_subdir resolver)
        from lcc import ConfigError
        from lcc.io import read_json, write_json
        from lcc.job import config_hash
        from lcc.sweep import folder_collisions
        from lcc.validate import problems

        assert self.hydra_context is not None and self.config is not None
        loader = self.hydra_context.config_loader
        errors, jobs, hashes = [], [], []
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
            if not found:  # folder names must be one-to-one with configs (lcc.sweep.folder_collisions)
                keep = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
                hashes.append(config_hash(OmegaConf.to_container(keep, resolve=True)))
        if errors:
            raise ConfigError(f"{len(errors)} of {len(batch)} jobs have invalid configs; nothing was launched:\n"
                              + "\n".join(errors))
        shared = folder_collisions([{**j, "config_hash": h} for j, h in zip(jobs, hashes)])
        if shared:
            raise ConfigError(f"{len(shared)} job folder(s) would hold jobs with different configs (folder names "
                              f"write '/' as '_'); nothing was launched. Rename the files or folders so that the "
                              f"values differ in more than '/' versus '_':\n" + "\n".join(shared))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        manifest = sweep_dir / "lcc_jobs.json"
        # Earlier launches into the same sweep dir (a resumed or extended sweep) stay listed.
        old = read_json(manifest)["jobs"] if manifest.exists() else []
        new_dirs = {j["dir"] for j in jobs}
        write_json(manifest, {"jobs": [j for j in old if j["dir"] not in new_dirs] + jobs})
        self._n_validated += len(batch)
