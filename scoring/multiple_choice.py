"""Multiple-choice metrics over flat per-choice arrays (lm-eval ``process_results`` semantics).

Document ``d`` owns choices ``choice_offsets[d]:choice_offsets[d+1]`` and gold indices
``gold_values[gold_offsets[d]:gold_offsets[d+1]]``. One gold is lm-eval's single target; several
are ``multiple_target`` (``pred in gold``). ``-100`` marks an invalid gold (always wrong).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import prange

from ._jit import jit, launch, pjit

INVALID_GOLD = -100

#: The per-document metrics of the kernel (float64, one value per document).
KERNEL_METRICS = ("acc", "acc_norm", "acc_bytes", "acc_mutual_info", "exact_match",
                  "brier_score")
#: Metric names ``multiple_choice_metrics`` understands.
MC_METRICS = (
    *KERNEL_METRICS,
    "pred",
    "pred_norm",
    "pred_bytes",
    "pred_mutual_info",
    "f1",
    "mcc",
)


@jit
def _argmax(lls, den, unc, mode, s, e):
    """np.argmax of key(j) over [s, e): ties -> lowest index, first NaN wins; -1 if empty."""
    best = -1
    bv = 0.0
    for j in range(s, e):
        if mode == 0:
            v = lls[j]
        elif mode == 3:
            v = lls[j] - unc[j]
        else:
            v = lls[j] / den[j]
        if v != v:
            return j - s
        if best < 0 or v > bv:
            best = j
            bv = v
    return -1 if best < 0 else best - s


@jit
def _resolve(g, k):
    """Python-style index of gold ``g`` among ``k`` choices, or -1 when it is unusable."""
    if g == -100 or g >= k or g < -k:
        return -1
    return g + k if g < 0 else g


@jit
def _hit(pred, golds, gs, ge):
    if pred < 0:
        return 0.0
    for t in range(gs, ge):
        if golds[t] == pred:
            return 1.0
    return 0.0


@pjit
def _mc_kernel(lls, greedy, coff, golds, goff, chars, nbytes, unc, use_unc,
               preds, accs, exact, brier):
    n_docs = coff.shape[0] - 1
    for d in prange(n_docs):
        s = coff[d]
        e = coff[d + 1]
        k = e - s
        gs = goff[d]
        ge = goff[d + 1]
        preds[0, d] = _argmax(lls, chars, unc, 0, s, e)
        preds[1, d] = _argmax(lls, chars, unc, 1, s, e)
        preds[2, d] = _argmax(lls, nbytes, unc, 2, s, e)
        preds[3, d] = _argmax(lls, chars, unc, 3, s, e) if use_unc else -1
        for m in range(4):
            accs[m, d] = _hit(preds[m, d], golds, gs, ge)
        em = 0.0
        for t in range(gs, ge):
            r = _resolve(golds[t], k)
            if r >= 0 and greedy[s + r]:
                em = 1.0
        exact[d] = em
        # brier: softmax(lls) vs one-hot(gold); lm-eval only defines it for one valid gold
        r = _resolve(golds[gs], k) if ge - gs == 1 else -1
        if r < 0 or k == 0:
            brier[d] = np.nan
            continue
        mx = lls[s]
        for j in range(s, e):
            if lls[j] != lls[j]:
                mx = lls[j]
                break
            if lls[j] > mx:
                mx = lls[j]
        tot = 0.0
        for j in range(s, e):
            tot += np.exp(lls[j] - mx)
        b = 0.0
        for j in range(s, e):
            p = np.exp(lls[j] - mx) / tot
            if j - s == r:
                p -= 1.0
            b += p * p
        brier[d] = b


def _f64(x: np.ndarray, n: int, what: str) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{what} must be a 1-D array with one value per choice ({n})")
    return a


def multiple_choice_metrics(
    lls: np.ndarray,
    is_greedy: np.ndarray,
    choice_offsets: np.ndarray,
    gold_values: np.ndarray,
    gold_offsets: np.ndarray,
    choice_chars: np.ndarray,
    choice_bytes: np.ndarray,
    metrics: Sequence[str],
    lls_unconditional: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-document multiple-choice metrics, exactly as lm-eval's ``process_results``.

    Returns ``{metric: array[n_docs]}`` for each requested name: ``acc``, ``acc_norm``
    (length-normalised by characters), ``acc_bytes``, ``acc_mutual_info`` (needs
    ``lls_unconditional``), ``exact_match`` (``is_greedy[gold]``; any gold for multiple
    targets), ``brier_score`` (per-doc ``sum((softmax(lls) - onehot(gold))**2)``; NaN where
    lm-eval cannot compute it: invalid or multiple golds), float64; ``pred``, ``pred_norm``,
    ``pred_bytes``, ``pred_mutual_info`` (int64 argmax, -1 for a doc without choices); ``f1``
    and ``mcc`` (``(n_docs, 2)`` int64 ``(gold, pred)`` items, single-target docs only).
    Ties go to the lowest index and a NaN wins, as with ``np.argmax``. Docs without choices
    score 0 (lm-eval raises there).
    """
    unknown = [m for m in metrics if m not in MC_METRICS]
    if unknown:
        raise KeyError(f"unknown multiple-choice metrics: {unknown}")
    ll = np.ascontiguousarray(lls, dtype=np.float64)
    n = ll.shape[0]
    greedy = np.ascontiguousarray(is_greedy, dtype=np.bool_)
    if ll.ndim != 1 or greedy.shape != (n,):
        raise ValueError("lls and is_greedy must be 1-D arrays of equal length")
    coff = np.ascontiguousarray(choice_offsets, dtype=np.int64)
    goff = np.ascontiguousarray(gold_offsets, dtype=np.int64)
    golds = np.ascontiguousarray(gold_values, dtype=np.int64)
    if coff.ndim != 1 or coff.shape != goff.shape or coff.shape[0] < 1:
        raise ValueError("choice_offsets and gold_offsets must both have length n_docs + 1")
    if coff[0] != 0 or coff[-1] != n or np.any(np.diff(coff) < 0):
        raise ValueError("choice_offsets must rise from 0 to len(lls)")
    if goff[0] != 0 or goff[-1] != golds.shape[0] or np.any(np.diff(goff) < 0):
        raise ValueError("gold_offsets must rise from 0 to len(gold_values)")
    chars = _f64(choice_chars, n, "choice_chars")
    nbytes = _f64(choice_bytes, n, "choice_bytes")
    use_unc = lls_unconditional is not None
    if use_unc:
        unc = _f64(lls_unconditional, n, "lls_unconditional")
    elif "acc_mutual_info" in metrics or "pred_mutual_info" in metrics:
        raise ValueError("acc_mutual_info needs lls_unconditional")
    else:
        unc = ll
    n_docs = coff.shape[0] - 1
    preds = np.empty((4, n_docs), dtype=np.int64)
    accs = np.empty((4, n_docs), dtype=np.float64)
    exact = np.empty(n_docs, dtype=np.float64)
    brier = np.empty(n_docs, dtype=np.float64)
    launch(_mc_kernel, ll, greedy, coff, golds, goff, chars, nbytes, unc, use_unc,
               preds, accs, exact, brier)
    table = {
        "acc": accs[0], "acc_norm": accs[1], "acc_bytes": accs[2], "acc_mutual_info": accs[3],
        "pred": preds[0], "pred_norm": preds[1], "pred_bytes": preds[2],
        "pred_mutual_info": preds[3], "exact_match": exact, "brier_score": brier,
    }
    out: dict[str, np.ndarray] = {}
    for m in metrics:
        if m in ("f1", "mcc"):
            if np.any(np.diff(goff) != 1):
                raise ValueError(f"{m} needs exactly one gold per document")
            out[m] = np.stack([golds, preds[0]], axis=1)
        else:
            out[m] = table[m]
    return out


@pjit
def _mc2_kernel(lls, coff, labels, out):
    for d in prange(coff.shape[0] - 1):
        tot = 0.0
        for j in range(coff[d], coff[d + 1]):
            tot += np.exp(lls[j])
        pm = 0.0
        for j in range(coff[d], coff[d + 1]):
            if labels[j] == 1:
                pm += np.exp(lls[j]) / tot
        out[d] = pm


def truthfulqa_mc2(lls: np.ndarray, choice_offsets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-doc truthfulqa_mc2 ``acc``: probability mass of the true answers.

    Same formula as lm-eval's ``process_results_mc2``: ``exp(ll)`` normalised over the doc's
    choices (no max-shift, so total underflow gives NaN there too), summed where label == 1.
    """
    ll = np.ascontiguousarray(lls, dtype=np.float64)
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    coff = np.ascontiguousarray(choice_offsets, dtype=np.int64)
    if ll.ndim != 1 or lab.shape != ll.shape:
        raise ValueError("lls and labels must be 1-D arrays of equal length")
    if coff.ndim != 1 or coff[0] != 0 or coff[-1] != ll.shape[0] or np.any(np.diff(coff) < 0):
        raise ValueError("choice_offsets must rise from 0 to len(lls)")
    out = np.empty(coff.shape[0] - 1, dtype=np.float64)
    launch(_mc2_kernel, ll, coff, lab, out)
    return out
