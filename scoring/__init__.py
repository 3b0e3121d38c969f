"""evalfleet.scoring: Numba kernels turning per-token logprobs into lm-eval metrics.

Everything numeric after the workers (per-request sums, multiple-choice metrics, corpus
aggregations, closed-form and bootstrap standard errors, group aggregation) lives here and
matches lm-eval 0.4.13.
"""

from __future__ import annotations

from ._cache import use_writable_cache

use_writable_cache()  # before any kernel module imports numba

from .aggregations import weighted_mean  # noqa: E402
from .group import (  # noqa: E402
    aggregate_subtask_metrics,
    group_aggregate,
    pooled_sample_stderr,
    unweighted_mean_stderr,
)
from .loglik import (  # noqa: E402
    count_bytes,
    count_words,
    loglikelihood_metrics,
    request_loglikelihoods,
    rolling_metrics,
)
from .multiple_choice import MC_METRICS, multiple_choice_metrics, truthfulqa_mc2  # noqa: E402
from .passk import pass_at_k  # noqa: E402
from .reductions import mean_stderr, sample_stddev  # noqa: E402
from .registry import (  # noqa: E402
    AGGREGATIONS,
    DEFAULT_METRICS,
    METRICS,
    AggregationSpec,
    MetricSpec,
    aggregation_for_callable,
    get_metric,
)
from .standard_errors import NA, aggregate, stderr  # noqa: E402
from .text import exact_match  # noqa: E402

__all__ = [
    "AGGREGATIONS",
    "MC_METRICS",
    "METRICS",
    "NA",
    "DEFAULT_METRICS",
    "AggregationSpec",
    "MetricSpec",
    "aggregate",
    "aggregation_for_callable",
    "aggregate_subtask_metrics",
    "count_bytes",
    "count_words",
    "exact_match",
    "get_metric",
    "group_aggregate",
    "loglikelihood_metrics",
    "mean_stderr",
    "multiple_choice_metrics",
    "pass_at_k",
    "pooled_sample_stderr",
    "request_loglikelihoods",
    "rolling_metrics",
    "sample_stddev",
    "stderr",
    "truthfulqa_mc2",
    "unweighted_mean_stderr",
    "weighted_mean",
]
