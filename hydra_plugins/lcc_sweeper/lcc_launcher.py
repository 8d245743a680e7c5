"""``hydra/launcher=lcc_slurm``: hydra-submitit-launcher's SlurmLauncher with its own schema plus ``srun_args``
(submitit's ``slurm_srun_args``, which the plugin's schema lacks). The launcher passes every field on to
submitit as ``slurm_<field>``, so only the schema needs the extra field. Selected by lcc/conf/launcher/slurm.yaml."""
from dataclasses import dataclass, field
from typing import List

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class LccSlurmQueueConf(SlurmQueueConf):
    srun_args: List[str] = field(default_factory=list)   # extra arguments of the srun line in the sbatch script


ConfigStore.instance().store(group="hydra/launcher", name="lcc_slurm", node=LccSlurmQueueConf(), provider="lcc")
