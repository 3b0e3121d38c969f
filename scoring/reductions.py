"""Exact sequential reductions (match Python's ``sum`` order in lm-eval 0.4.13 on Python 3.11)."""

from __future__ import annotations

import math

import numpy as np

from ._jit import jit


@jit
def seq_sum(x):
    """Left-to-right float64 sum, as Python 3.11's ``sum`` over floats."""
    tot = 0.0
    for i in range(x.shape[0]):
        tot += x[i]
    return tot


@jit
def _sum_sq_dev(x, mu):
    tot = 0.0
    for i in range(x.shape[0]):
        d = x[i] - mu
        tot += d * d
    return tot


def as_f64(items) -> np.ndarray:
    """Items as a contiguous 1-D float64 array."""
    a = np.ascontiguousarray(items, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"expected a 1-D array of per-item values, got shape {a.shape}")
    return a


def mean(x: np.ndarray) -> float:
    """lm-eval ``mean``: ``sum(arr) / len(arr)``."""
    if x.shape[0] == 0:
        raise ZeroDivisionError("mean of an empty sample")
    return seq_sum(x) / x.shape[0]


def sample_stddev(x: np.ndarray) -> float:
    """lm-eval ``sample_stddev``: Bessel-corrected standard deviation."""
    mu = mean(x)
    return math.sqrt(_sum_sq_dev(x, mu) / (x.shape[0] - 1))


def mean_stderr(x: np.ndarray) -> float:
    """lm-eval ``mean_stderr``: ``sample_stddev / sqrt(n)``."""
    return sample_stddev(x) / math.sqrt(x.shape[0])
