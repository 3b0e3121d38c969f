"""Confusion-matrix statistics (sklearn ``matthews_corrcoef`` / binary and macro ``f1_score``).

Every function here works on a ``(k, k)`` count matrix ``C[true, pred]`` so that a bootstrap
resample is one multinomial draw of the cell counts.
"""

from __future__ import annotations

import numpy as np

from ._jit import jit


@jit
def mcc_from_counts(c):
    """sklearn's multiclass Matthews correlation from a ``(k, k)`` confusion matrix."""
    k = c.shape[0]
    t_sum = np.zeros(k)
    p_sum = np.zeros(k)
    n_correct = 0.0
    for i in range(k):
        n_correct += c[i, i]
        for j in range(k):
            t_sum[i] += c[i, j]
            p_sum[j] += c[i, j]
    n = 0.0
    tp = 0.0
    pp = 0.0
    tt = 0.0
    for i in range(k):
        n += p_sum[i]
        tp += t_sum[i] * p_sum[i]
        pp += p_sum[i] * p_sum[i]
        tt += t_sum[i] * t_sum[i]
    cov_ytyp = n_correct * n - tp
    prod = (n * n - pp) * (n * n - tt)
    if prod == 0.0:
        return 0.0
    return cov_ytyp / np.sqrt(prod)


@jit
def f1_binary_from_counts(c):
    """Binary F1 of class index 1 from a ``(2, 2)`` matrix; 0.0 when undefined (sklearn)."""
    tp = c[1, 1]
    den = 2.0 * tp + c[0, 1] + c[1, 0]
    if den == 0.0:
        return 0.0
    return 2.0 * tp / den


@jit
def f1_macro_from_counts(c):
    """Macro F1 over all ``k`` classes of the matrix (0.0 for a class with no support)."""
    k = c.shape[0]
    tot = 0.0
    for i in range(k):
        tp = c[i, i]
        fp = 0.0
        fn = 0.0
        for j in range(k):
            if j != i:
                fp += c[j, i]
                fn += c[i, j]
        den = 2.0 * tp + fp + fn
        if den > 0.0:
            tot += 2.0 * tp / den
    return tot / k


def pairs_array(items) -> np.ndarray:
    """``(gold, pred)`` items as an ``(n, 2)`` int64 array."""
    a = np.asarray(items)
    if a.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    a = a.astype(np.int64).reshape(-1, 2)
    return a


def confusion(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (sorted union of golds and preds) and the ``(k, k)`` float64 count matrix."""
    labels, inv = np.unique(pairs, return_inverse=True)
    inv = inv.reshape(pairs.shape)
    k = labels.shape[0]
    c = np.zeros(k * k, dtype=np.float64)
    np.add.at(c, inv[:, 0] * k + inv[:, 1], 1.0)
    return labels, c.reshape(k, k)


def binary_confusion(pairs: np.ndarray) -> np.ndarray:
    """``(2, 2)`` matrix of (gold == 1, pred == 1), checked like sklearn's binary average."""
    labels = np.unique(pairs)
    if labels.shape[0] > 2:
        raise ValueError("f1 (average='binary') got more than two labels: target is multiclass")
    if labels.shape[0] == 2 and 1 not in labels:
        raise ValueError(f"pos_label=1 is not a valid label: it should be one of {labels}")
    pos = (pairs == 1).astype(np.int64)
    c = np.zeros(4, dtype=np.float64)
    np.add.at(c, pos[:, 0] * 2 + pos[:, 1], 1.0)
    return c.reshape(2, 2)
