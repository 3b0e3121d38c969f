"""Compile every scoring kernel ahead of the first evaluation (``evalfleet warmup``).

Kernels compile on first use, per argument types, into the on-disk cache (``_cache``); a first
evaluation ever would otherwise spend seconds compiling before it scores. This runs each kernel
through its public entry point on tiny inputs of the types an evaluation passes, so the cache
holds exactly what a later process loads. A packager runs it once at install or image build
time, as the user that runs evaluations (the cache is per user, ``$EVALFLEET_CACHE_DIR``).
"""

from __future__ import annotations

import numpy as np

from .loglik import request_loglikelihoods, rolling_metrics
from .multiple_choice import multiple_choice_metrics, truthfulqa_mc2
from .passk import pass_at_k
from .reductions import mean_stderr, sample_stddev
from .registry import AGGREGATIONS
from .standard_errors import stderr

_VALUE_ITEMS = [0.5, 1.0, 2.0, 4.0]
_PAIR_ITEMS = [(0, 1), (1, 1), (1, 0), (0, 0)]


def compile_kernels() -> None:
    """Run every scoring kernel once (compiling it, or loading it from the cache)."""
    offsets = np.array([0, 2, 4], dtype=np.int64)
    for dtype in (np.float32, np.float64):  # hf workers answer float32; others float64
        request_loglikelihoods(np.zeros(4, dtype), np.ones(4, bool), offsets)
    lls = np.array([-1.0, -2.0, -0.5, -3.0])
    ones = np.ones(4)
    multiple_choice_metrics(lls, np.ones(4, bool), offsets, np.array([0, 1]), np.array([0, 1, 2]),
                            ones, ones, ["acc", "acc_mutual_info"], lls_unconditional=lls)
    truthfulqa_mc2(lls, offsets, np.array([1, 0, 1, 0]))
    rolling_metrics(lls, ones, ones)
    mean_stderr(lls)
    sample_stddev(lls)
    pass_at_k(np.array([4, 4]), np.array([1, 0]), 1)
    for name, spec in AGGREGATIONS.items():
        if spec.stderr == "bootstrap" and spec.max_iters is None:  # Numba resampling
            pairs = name in ("f1", "f1_macro", "matthews_corrcoef", "mcc")
            stderr(name, _PAIR_ITEMS if pairs else _VALUE_ITEMS, bootstrap_iters=10)
