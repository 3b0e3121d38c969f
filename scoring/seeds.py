"""Deterministic per-chunk seeds derived from one base seed (thread-count independent)."""

from __future__ import annotations

import numpy as np

DEFAULT_SEED = 1234


def derive_seeds(base_seed: int, count: int) -> np.ndarray:
    """``count`` 32-bit seeds: splitmix64 of (base_seed, index), as int64."""
    with np.errstate(over="ignore"):
        z = np.uint64(base_seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = z + (np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0xBF58476D1CE4E5B9))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(0xFFFFFFFF)).astype(np.int64)
