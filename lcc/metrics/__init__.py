"""Pure metric functions on tensors: per-token metrics, their per-job summaries, and the one registry of
metrics (``lcc.metrics.registry``) that the summary, the curve table, reduce and the logger read."""
from lcc.metrics.token import chunked_token_metrics, token_metrics  # noqa: F401
from lcc.metrics.summary import (octave_bins, bin_means, mean_se, position_table, slope_vs_log2,  # noqa: F401
                                 summarize)
