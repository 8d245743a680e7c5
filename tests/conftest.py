import os

import pytest
import torch

# Keep every cache a test creates inside the repo's .cache/ unless the caller chose otherwise.
os.environ.setdefault("LCC_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "lcc"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_model():
    from lcc.models import tiny_llama
    return tiny_llama(n_layers=2, seed=0)


from slurm_fixture import slurm_cluster  # noqa: E402,F401  (session fixture: a one-node SLURM cluster)
