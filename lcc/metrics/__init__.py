"""Pure metric functions on tensors: per-token metrics (``lcc.metrics.token``), position bins and per-document
statistics (``lcc.metrics.bins``), per-job summaries (``lcc.metrics.summary``) and the one registry of metrics
(``lcc.metrics.registry``) that the summary, the curve table, reduce and the logger read."""
from lcc.metrics.bins import bin_means, mean_se, octave_bins, slope_vs_log2  # noqa: F401
from lcc.metrics.summary import position_table, summarize  # noqa: F401
from lcc.metrics.token import chunked_token_metrics, token_metrics  # noqa: F401
