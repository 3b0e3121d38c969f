"""Corpus-level aggregation functions (lm-eval 0.4.13 ``register_aggregation`` semantics)."""

from __future__ import annotations

import math

import numpy as np

from . import confusion as cm
from .reductions import as_f64, mean, seq_sum


def agg_mean(items) -> float:
    """Arithmetic mean of per-item floats."""
    return mean(as_f64(items))


def agg_median(items) -> float:
    """lm-eval ``median``: ``sorted(arr)[len(arr) // 2]`` (upper median)."""
    x = np.sort(as_f64(items))
    return float(x[x.shape[0] // 2])


def agg_nanmean(items) -> float:
    """Mean ignoring NaN; NaN when empty or all NaN."""
    x = as_f64(items)
    if x.shape[0] == 0 or np.all(np.isnan(x)):
        return float("nan")
    return float(np.nanmean(x))


def agg_perplexity(items) -> float:
    """``exp(-mean(ll))`` over per-doc log-likelihoods."""
    return math.exp(-agg_mean(items))


def _pairs(items) -> np.ndarray:
    a = np.asarray(items, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"expected (n, 2) (value, weight) pairs, got shape {a.shape}")
    return a


def weighted_mean(items) -> float:
    """``sum(values) / sum(weights)`` over ``(value, weight)`` pairs."""
    a = _pairs(items)
    return seq_sum(np.ascontiguousarray(a[:, 0])) / seq_sum(np.ascontiguousarray(a[:, 1]))


def agg_weighted_perplexity(items) -> float:
    """``exp(-Σll / Σcount)`` (word_perplexity, byte_perplexity)."""
    return math.exp(-weighted_mean(items))


def agg_bits_per_byte(items) -> float:
    """``-Σll / (Σbytes · ln 2)``."""
    return -weighted_mean(items) / math.log(2)


def agg_f1(items) -> float:
    """sklearn ``f1_score(golds, preds)`` (binary, pos_label=1) over ``(gold, pred)`` items."""
    return float(cm.f1_binary_from_counts(cm.binary_confusion(cm.pairs_array(items))))


def agg_f1_macro(items) -> float:
    """sklearn ``f1_score(golds, preds, average='macro')`` over ``(gold, pred)`` items."""
    _, c = cm.confusion(cm.pairs_array(items))
    return float(cm.f1_macro_from_counts(c))


def agg_mcc(items) -> float:
    """sklearn ``matthews_corrcoef(golds, preds)`` over ``(gold, pred)`` items."""
    _, c = cm.confusion(cm.pairs_array(items))
    return float(cm.mcc_from_counts(c))


def agg_brier_score(items) -> float:
    """Mean of per-doc Brier scores (``multiple_choice_metrics(..., ["brier_score"])``)."""
    return float(np.mean(as_f64(items)))


def agg_bypass(items) -> float:
    """lm-eval's placeholder aggregation: always 999."""
    return 999


def _acc_all_groups(items, key) -> list[int]:
    groups: dict = {}
    for pred, doc in items:
        gold = doc["label"] == 1
        groups.setdefault(key(doc["idx"]), []).append(gold == pred)
    return [int(all(v)) for v in groups.values()]


def agg_acc_all(items) -> float:
    """lm-eval ``acc_all`` over ``(pred, doc)`` items: a question (``doc["idx"]`` paragraph and
    question) counts as correct only when every one of its answers is (gold = label == 1)."""
    return float(np.mean(_acc_all_groups(items, lambda i: (i["paragraph"], i["question"]))))


def acc_all_stderr(items) -> float:
    """lm-eval ``acc_all_stderr``: mean_stderr of per-question all-correct, grouped by
    ``doc["idx"]["question"]`` alone (as lm-eval does)."""
    from .reductions import mean_stderr

    return mean_stderr(as_f64(_acc_all_groups(items, lambda i: i["question"])))


def make_sacre(name: str):
    """Aggregation for a sacrebleu corpus metric over ``(reference, prediction)`` items."""

    def agg(items) -> float:
        from .sacre import corpus_score

        return corpus_score(name, items)

    agg.__name__ = f"agg_{name}"
    agg.__doc__ = f"sacrebleu corpus {name} over (reference, prediction) items."
    return agg
