"""Unbiased pass@k estimator (Chen et al., 2021)."""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import launch, pjit


@pjit
def _pass_at_k(n, c, k, out):
    for i in prange(n.shape[0]):
        if n[i] - c[i] < k:
            out[i] = 1.0
        else:
            prod = 1.0
            for j in range(n[i] - c[i] + 1, n[i] + 1):
                prod *= 1.0 - k / j
            out[i] = 1.0 - prod


def pass_at_k(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Per problem ``1 - C(n-c, k) / C(n, k)`` with ``n`` samples of which ``c`` are correct.

    Computed as ``1 - prod(1 - k / j for j in n-c+1..n)``; 1.0 when ``n - c < k``.
    """
    nn = np.ascontiguousarray(n, dtype=np.int64)
    cc = np.ascontiguousarray(c, dtype=np.int64)
    if nn.shape != cc.shape or nn.ndim != 1:
        raise ValueError("n and c must be 1-D arrays of equal length")
    if k < 1 or np.any(cc < 0) or np.any(cc > nn):
        raise ValueError("need k >= 1 and 0 <= c <= n")
    out = np.empty(nn.shape[0], dtype=np.float64)
    launch(_pass_at_k, nn, cc, int(k), out)
    return out
