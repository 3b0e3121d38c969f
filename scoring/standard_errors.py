"""``aggregate`` and ``stderr``: lm-eval 0.4.13 per-task aggregation and standard errors."""

from __future__ import annotations

from typing import Any

import numpy as np

from .reductions import as_f64, mean_stderr, sample_stddev
from .registry import get_aggregation
from .seeds import DEFAULT_SEED

NA = "N/A"


def aggregate(aggregation: str, items: Any) -> float:
    """Aggregate per-item values with the named aggregation (see ``AGGREGATIONS``)."""
    return get_aggregation(aggregation).fn(items)


def stderr(
    aggregation: str, items: Any, bootstrap_iters: int = 100000, *, seed: int = DEFAULT_SEED
) -> float | str:
    """Standard error of ``aggregate(aggregation, items)`` as lm-eval reports it.

    ``"N/A"`` when lm-eval reports it (or returns None): ``bootstrap_iters <= 0``, one item or
    fewer, or an aggregation without a stderr (weighted_perplexity, bits_per_byte, brier_score,
    bypass). ``mean`` uses the closed form; bootstrappable aggregations resample with
    replacement (lm-eval's iteration count, capped at 100 for bleu/chrf/chrf++/ter) and return
    the sample standard deviation of the replicates. ``seed`` makes the bootstrap reproducible.
    """
    spec = get_aggregation(aggregation)
    if bootstrap_iters <= 0 or len(items) <= 1 or spec.stderr is None:
        return NA
    if spec.stderr == "mean":
        return mean_stderr(as_f64(items))
    if spec.stderr == "custom":
        return spec.stderr_fn(items)
    iters = bootstrap_iters if spec.max_iters is None else min(bootstrap_iters, spec.max_iters)
    reps = np.ascontiguousarray(spec.replicates(items, iters, seed), dtype=np.float64)
    if reps.shape[0] < 2:
        return NA
    return sample_stddev(reps)
