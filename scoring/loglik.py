"""Per-request log-likelihood reduction and the plain/rolling loglikelihood metrics."""

from __future__ import annotations

import re

import numpy as np
from numba import prange

from ._jit import launch, pjit


@pjit
def _segment_sums(values, flags, offsets, out_ll, out_greedy):
    n = offsets.shape[0] - 1
    for i in prange(n):
        acc = 0.0
        ok = True
        for j in range(offsets[i], offsets[i + 1]):
            acc += values[j]
            ok = ok and flags[j]
        out_ll[i] = acc
        out_greedy[i] = ok


def _as_offsets(offsets: np.ndarray) -> np.ndarray:
    off = np.ascontiguousarray(offsets, dtype=np.int64)
    if off.ndim != 1 or off.shape[0] < 1:
        raise ValueError("offsets must be a 1-D array of length n+1 >= 1")
    if off.shape[0] > 1 and (off[0] < 0 or np.any(np.diff(off) < 0)):
        raise ValueError("offsets must be non-negative and non-decreasing")
    return off


def request_loglikelihoods(
    token_logprobs: np.ndarray, greedy: np.ndarray, offsets: np.ndarray,
    totals: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce per-token logprobs to per-request ``(ll, is_greedy)``.

    Request ``i`` owns tokens ``offsets[i]:offsets[i+1]``; ``ll`` is their sum (float64
    accumulation) and ``is_greedy`` is true when every token was the argmax. An empty
    segment gives ``(0.0, True)``. ``totals`` (one per request, NaN where absent) are the
    backends' own sums, computed as the reference harness computes them (for 16-bit models
    lm-eval sums in the model's dtype); where present they are ``ll``.
    """
    off = _as_offsets(offsets)
    values = np.ascontiguousarray(token_logprobs)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    flags = np.ascontiguousarray(greedy, dtype=np.bool_)
    if values.shape != flags.shape or values.ndim != 1:
        raise ValueError("token_logprobs and greedy must be 1-D arrays of equal length")
    if off.shape[0] > 1 and off[-1] > values.shape[0]:
        raise ValueError("offsets point past the end of token_logprobs")
    n = off.shape[0] - 1
    ll = np.empty(n, dtype=np.float64)
    is_greedy = np.empty(n, dtype=np.bool_)
    launch(_segment_sums, values, flags, off, ll, is_greedy)
    if totals is not None:
        given = np.asarray(totals, dtype=np.float64)
        if given.shape != (n,):
            raise ValueError("totals must have one value per request")
        ll = np.where(np.isnan(given), ll, given)
    return ll, is_greedy


def loglikelihood_metrics(lls: np.ndarray, is_greedy: np.ndarray) -> dict[str, np.ndarray]:
    """Per-document items of a plain ``loglikelihood`` task (lm-eval: perplexity, acc)."""
    return {
        "perplexity": np.asarray(lls, dtype=np.float64),
        "acc": np.asarray(is_greedy, dtype=np.bool_).astype(np.float64),
    }


def rolling_metrics(
    lls: np.ndarray, words: np.ndarray, bytes_: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-document ``(ll, count)`` pairs of a ``loglikelihood_rolling`` task.

    ``words`` is lm-eval's ``len(re.split(r"\\s+", text))`` and ``bytes_`` the UTF-8 length;
    each result is an ``(n, 2)`` float64 array for the weighted aggregations.
    """
    ll = np.asarray(lls, dtype=np.float64)
    w = np.asarray(words, dtype=np.float64)
    b = np.asarray(bytes_, dtype=np.float64)
    if not (ll.shape == w.shape == b.shape) or ll.ndim != 1:
        raise ValueError("lls, words and bytes_ must be 1-D arrays of equal length")
    by_bytes = np.stack([ll, b], axis=1)
    return {
        "word_perplexity": np.stack([ll, w], axis=1),
        "byte_perplexity": by_bytes,
        "bits_per_byte": by_bytes.copy(),
    }


def count_words(text: str) -> int:
    """lm-eval's word count: ``len(re.split(r"\\s+", text))``."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    """lm-eval's byte count: UTF-8 length."""
    return len(text.encode("utf-8"))
