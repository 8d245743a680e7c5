"""lcc: measure how zero-shot LLM compression drifts from the dense model as the context grows."""

__version__ = "0.1.0"


from hydra.errors import CompactHydraException


class ConfigError(CompactHydraException, ValueError):
    """A bad configuration value. The message names the value and the valid choices.
    (A CompactHydraException, so that Hydra prints the message alone and exits non-zero.)"""


def versions() -> dict:
    """Versions of lcc and what its numbers depend on (written into every result; a subset keys the caches)."""
    import platform

    import torch
    import transformers

    return {"lcc": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
