"""Pure metric functions on tensors: per-token metrics and their per-job summaries."""
from lcc.metrics.token import chunked_token_metrics, token_metrics  # noqa: F401
from lcc.metrics.summary import (octave_bins, bin_means, mean_se, slope_vs_log2,  # noqa: F401
                                 summarize)
