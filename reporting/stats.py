"""Significance of a difference between two runs, per task and metric.

- **Paired, per document** (both runs logged samples of the same documents and the metric is a
  per-document number whose mean is the reported value): the differences ``d_i = b_i - a_i``.
  For 0/1 metrics (acc, acc_norm, exact_match...) McNemar's exact test: under no difference the
  discordant pairs split 50/50, so the two-sided p-value is the binomial test of
  ``#(a=0, b=1)`` out of all discordant pairs with p = 0.5 (what ``scipy.stats.binomtest``
  computes). For other metrics the paired t-test (``scipy.stats.ttest_rel``). The standard error
  of the difference is ``sd(d) / sqrt(n)`` in both cases.
- **Unpaired, from the reported standard errors** otherwise: ``z = (b - a) / sqrt(se_a² + se_b²)``
  and a two-sided normal p-value (runs of different documents are independent samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

PAIRED_T = "paired t-test"
MCNEMAR = "McNemar exact"
UNPAIRED = "z-test on stderrs"


@dataclass(frozen=True)
class TestResult:
    """A difference ``b - a``, its standard error and two-sided p-value."""

    diff: float
    se: float | None
    p_value: float | None
    method: str
    n: int | None = None  # paired documents


def is_binary(values: np.ndarray) -> bool:
    """Whether every value is 0 or 1."""
    return bool(np.all((values == 0) | (values == 1)))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes."""
    worse = int(np.sum((a == 1) & (b == 0)))
    better = int(np.sum((a == 0) & (b == 1)))
    n = worse + better
    if n == 0:
        return 1.0
    k = min(worse, better)
    if 2 * k == n:
        return 1.0
    return float(min(1.0, 2.0 * special.bdtr(k, n, 0.5)))


def paired_t(d: np.ndarray) -> tuple[float, float | None]:
    """Two-sided paired t-test p-value of differences ``d`` and the stderr of their mean."""
    n = len(d)
    if n < 2:
        return 1.0, None
    sd = float(np.std(d, ddof=1))
    se = sd / math.sqrt(n)
    mean = float(np.mean(d))
    if se == 0.0:
        return (1.0 if mean == 0.0 else 0.0), 0.0
    t = mean / se
    return float(2.0 * special.stdtr(n - 1, -abs(t))), se


def paired_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Paired per-document test of ``b`` against ``a`` (same documents, same order)."""
    va = np.asarray(a, dtype=np.float64)
    vb = np.asarray(b, dtype=np.float64)
    d = vb - va
    p_t, se = paired_t(d)
    if is_binary(va) and is_binary(vb):
        return TestResult(float(np.mean(d)), se, mcnemar_exact(va, vb), MCNEMAR, len(d))
    return TestResult(float(np.mean(d)), se, p_t, PAIRED_T, len(d))


def unpaired_test(a: float, se_a: float | None, b: float, se_b: float | None) -> TestResult:
    """Difference of two independent estimates from their standard errors."""
    diff = b - a
    if se_a is None or se_b is None:
        return TestResult(diff, None, None, UNPAIRED)
    se = math.sqrt(se_a ** 2 + se_b ** 2)
    if se == 0.0:
        return TestResult(diff, 0.0, 1.0 if diff == 0 else 0.0, UNPAIRED)
    return TestResult(diff, se, math.erfc(abs(diff) / se / math.sqrt(2.0)), UNPAIRED)
