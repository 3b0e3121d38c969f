"""Group aggregation of subtask metrics (lm-eval 0.4.13 ``Group.aggregate``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

NA = "N/A"


def aggregate_subtask_metrics(
    values: Sequence[float], sizes: Sequence[int], weight_by_size: bool = True
) -> float:
    """Size-weighted mean of subtask scores (plain mean when ``weight_by_size`` is false)."""
    if len(values) != len(sizes):
        raise ValueError("values and sizes differ in length")
    w = list(sizes) if weight_by_size else [1] * len(sizes)
    return sum(v * s for v, s in zip(values, w, strict=True)) / sum(w)


def pooled_sample_stderr(stderrs: Sequence[float], sizes: Sequence[int]) -> float:
    """Pooled-variance stderr of a size-weighted mean of subtasks."""
    if len(stderrs) != len(sizes):
        raise ValueError("stderrs and sizes differ in length")
    var = sum((n - 1) * se**2 * n for n, se in zip(sizes, stderrs, strict=True)) / (
        sum(sizes) - len(sizes)
    )
    return math.sqrt(var / sum(sizes))


def unweighted_mean_stderr(stderrs: Sequence[float]) -> float:
    """Stderr of the plain mean of independent subtask means: ``sqrt(Σ se²) / k``."""
    return math.sqrt(sum(se**2 for se in stderrs)) / len(stderrs)


def group_aggregate(
    values: Sequence[float],
    stderrs: Sequence[float | str | None],
    sizes: Sequence[int],
    weight_by_size: bool = True,
) -> tuple[float, float | str]:
    """A group's ``(score, stderr)`` from its leaf tasks' scores, stderrs and sample counts.

    Score: size-weighted mean (plain mean when ``weight_by_size`` is false). Stderr:
    ``pooled_sample_stderr`` (weighted) or ``unweighted_mean_stderr``; ``"N/A"`` unless every
    leaf has a numeric stderr.
    """
    score = aggregate_subtask_metrics(values, sizes, weight_by_size)
    numeric = [se for se in stderrs if se is not None]
    if len(numeric) != len(values) or any(isinstance(se, str) for se in numeric):
        return score, NA
    if weight_by_size:
        return score, pooled_sample_stderr(numeric, sizes)
    return score, unweighted_mean_stderr(numeric)
