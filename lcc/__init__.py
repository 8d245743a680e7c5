"""lcc: measure how zero-shot LLM compression drifts from the dense model as the context grows."""

__version__ = "0.1.0"


from hydra.errors import CompactHydraException


class ConfigError(CompactHydraException, ValueError):
    """A bad configuration value. The message names the value and the valid choices.
    (A CompactHydraException, so that Hydra prints the message alone and exits non-zero.)"""
