"""evalfleet.scoring: Numba kernels turning per-token logprobs into lm-eval metrics.

Everything numeric after the workers (per-request sums, multiple-choice metrics, corpus
aggregations, closed-form and bootstrap standard errors, group aggregation) lives here and
matches lm-eval 0.4.13.

Importing this package is cheap: the kernel modules (and Numba) load on first use of a name, or
ahead of time with :func:`warm_up` (e.g. in a thread while a model loads).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._cache import use_writable_cache

use_writable_cache()  # before any kernel module imports numba

_EXPORTS = {
    "AGGREGATIONS": "registry", "AggregationSpec": "registry", "METRICS": "registry",
    "MetricSpec": "registry", "DEFAULT_METRICS": "registry",
    "aggregation_for_callable": "registry", "get_metric": "registry",
    "GROUPS": "registry", "MetricGroup": "registry", "register_metric": "registry",
    "register_aggregation": "registry", "DocBatch": "doc_batch", "MetricError": "per_document",
    "MC_METRICS": "multiple_choice",
    "multiple_choice_metrics": "multiple_choice", "truthfulqa_mc2": "multiple_choice",
    "NA": "standard_errors", "aggregate": "standard_errors", "stderr": "standard_errors",
    "aggregate_subtask_metrics": "group", "group_aggregate": "group",
    "pooled_sample_stderr": "group", "unweighted_mean_stderr": "group",
    "count_bytes": "loglik", "count_words": "loglik", "loglikelihood_metrics": "loglik",
    "request_loglikelihoods": "loglik", "rolling_metrics": "loglik",
    "exact_match": "text", "mean_stderr": "reductions", "sample_stddev": "reductions",
    "pass_at_k": "passk", "weighted_mean": "aggregations",
}
__all__ = [
    "AGGREGATIONS",
    "GROUPS",
    "MC_METRICS",
    "METRICS",
    "NA",
    "DEFAULT_METRICS",
    "AggregationSpec",
    "DocBatch",
    "MetricError",
    "MetricGroup",
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
    "register_aggregation",
    "register_metric",
    "request_loglikelihoods",
    "rolling_metrics",
    "sample_stddev",
    "stderr",
    "truthfulqa_mc2",
    "unweighted_mean_stderr",
    "weighted_mean",
]

if TYPE_CHECKING:
    from .aggregations import weighted_mean
    from .doc_batch import DocBatch
    from .group import (
        aggregate_subtask_metrics,
        group_aggregate,
        pooled_sample_stderr,
        unweighted_mean_stderr,
    )
    from .loglik import (
        count_bytes,
        count_words,
        loglikelihood_metrics,
        request_loglikelihoods,
        rolling_metrics,
    )
    from .multiple_choice import MC_METRICS, multiple_choice_metrics, truthfulqa_mc2
    from .passk import pass_at_k
    from .per_document import MetricError
    from .reductions import mean_stderr, sample_stddev
    from .registry import (
        AGGREGATIONS,
        DEFAULT_METRICS,
        GROUPS,
        METRICS,
        AggregationSpec,
        MetricGroup,
        MetricSpec,
        aggregation_for_callable,
        get_metric,
        register_aggregation,
        register_metric,
    )
    from .standard_errors import NA, aggregate, stderr
    from .text import exact_match


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def warm_up() -> None:
    """Load every kernel module and ready Numba's CPU target (its typing and lowering
    registries, about a second that the first kernel call of a process would pay otherwise).
    Compiles nothing: kernels still load from the on-disk cache, or compile, on first call."""
    for module in sorted(set(_EXPORTS.values())):
        importlib.import_module(f".{module}", __name__)
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    with global_compiler_lock:  # as Numba itself refreshes it, before compiling or loading
        cpu_target.target_context.refresh()
