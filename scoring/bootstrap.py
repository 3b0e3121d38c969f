"""Parallel, seeded bootstrap kernels (Numba prange; no process pool).

Resamples are split in chunks; chunk ``c`` seeds its thread's generator with
``derive_seeds(seed, n_chunks)[c]``, so results do not depend on the number of threads.
``replicate_count`` mirrors lm-eval: ``chunk * (iters // chunk)`` with ``chunk = min(1000, iters)``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import launch, pjit
from .confusion import f1_binary_from_counts, f1_macro_from_counts, mcc_from_counts
from .seeds import DEFAULT_SEED, derive_seeds

CHUNK = 1000

# statistic codes for the kernels
MEAN, PERPLEXITY, MEDIAN, NANMEAN = 0, 1, 2, 3
MCC, F1_BINARY, F1_MACRO = 0, 1, 2


def replicate_count(iters: int) -> tuple[int, int]:
    """``(chunk_size, n_chunks)`` exactly as lm-eval's ``bootstrap_stderr`` splits ``iters``."""
    chunk = min(CHUNK, iters)
    return chunk, iters // chunk


@pjit
def _values_kernel(xs, stat, chunk, seeds, out):
    n = xs.shape[0]
    for c in prange(seeds.shape[0]):
        np.random.seed(seeds[c])
        counts = np.zeros(n if stat == MEDIAN else 1, dtype=np.int64)
        for r in range(chunk):
            if stat == MEDIAN:
                counts[:] = 0
                for _ in range(n):
                    counts[np.random.randint(0, n)] += 1
                target = n // 2
                cum = 0
                v = xs[n - 1]
                for i in range(n):
                    cum += counts[i]
                    if cum > target:
                        v = xs[i]
                        break
                out[c * chunk + r] = v
            else:
                tot = 0.0
                m = 0
                for _ in range(n):
                    x = xs[np.random.randint(0, n)]
                    if stat == NANMEAN and x != x:
                        continue
                    tot += x
                    m += 1
                if m == 0:
                    out[c * chunk + r] = np.nan
                elif stat == PERPLEXITY:
                    out[c * chunk + r] = np.exp(-(tot / m))
                else:
                    out[c * chunk + r] = tot / m


@pjit
def _counts_kernel(cells, n, k, stat, chunk, seeds, out):
    total = 0.0
    for i in range(cells.shape[0]):
        total += cells[i]
    p = cells / total
    for c in prange(seeds.shape[0]):
        np.random.seed(seeds[c])
        mat = np.empty((k, k))
        for r in range(chunk):
            draw = np.random.multinomial(n, p)
            for i in range(k):
                for j in range(k):
                    mat[i, j] = draw[i * k + j]
            if stat == MCC:
                out[c * chunk + r] = mcc_from_counts(mat)
            elif stat == F1_BINARY:
                out[c * chunk + r] = f1_binary_from_counts(mat)
            else:
                out[c * chunk + r] = f1_macro_from_counts(mat)


def value_replicates(
    xs: np.ndarray, stat: int, iters: int, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Bootstrap replicates of a statistic of a 1-D float sample (O(n) per resample).

    ``xs`` need not be sorted; it is sorted here so ``MEDIAN`` can walk resample counts.
    """
    chunk, n_chunks = replicate_count(iters)
    x = np.sort(np.asarray(xs, dtype=np.float64)) if stat == MEDIAN else np.ascontiguousarray(
        xs, dtype=np.float64
    )
    out = np.empty(chunk * n_chunks, dtype=np.float64)
    launch(_values_kernel, x, stat, chunk, derive_seeds(seed, n_chunks), out)
    return out


def count_replicates(
    counts: np.ndarray, stat: int, iters: int, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Bootstrap replicates of a confusion-matrix statistic: one multinomial draw per resample."""
    c = np.ascontiguousarray(counts, dtype=np.float64)
    k = c.shape[0]
    n = int(round(c.sum()))
    chunk, n_chunks = replicate_count(iters)
    out = np.empty(chunk * n_chunks, dtype=np.float64)
    launch(_counts_kernel, c.reshape(-1), n, k, stat, chunk, derive_seeds(seed, n_chunks), out)
    return out


def sacre_replicates(name: str, items, iters: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Bootstrap replicates of a sacrebleu corpus score (Python; lm-eval caps these at 100)."""
    from .sacre import bootstrap_replicates

    chunk, n_chunks = replicate_count(iters)
    return bootstrap_replicates(name, items, derive_seeds(seed, chunk * n_chunks))
