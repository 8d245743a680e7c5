"""Pure metric functions on tensors: per-token metrics, their per-job summaries, and the one registry of
metrics (``lcc.metrics.registry``) that the summary, the curve table, reduce and the logger read.

The per-token functions (``lcc.metrics.token``, torch) load on first use, so that reading the registry
(lcc.reduce, which reads files only) does not import torch."""
from lcc.metrics.summary import (octave_bins, bin_means, mean_se, position_table, slope_vs_log2,  # noqa: F401
                                 summarize)

_TOKEN = ("chunked_token_metrics", "token_metrics")


def __getattr__(name: str):
    if name in _TOKEN:
        from lcc.metrics import token
        return getattr(token, name)
    raise AttributeError(f"module 'lcc.metrics' has no attribute {name!r}")
