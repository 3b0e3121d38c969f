"""Corpus BLEU / chrF / chrF++ / TER over ``(reference, prediction)`` items via sacrebleu.

Scores come from summed per-segment sufficient statistics, which is exactly how sacrebleu's
``corpus_*`` functions compute them; a bootstrap resample then only re-weights the statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER


def _metric(name: str) -> Any:
    if name == "bleu":
        return BLEU()
    if name == "chrf":
        return CHRF()
    if name == "chrf++":
        return CHRF(word_order=2)
    if name == "ter":
        return TER()
    raise KeyError(name)


def _is_seq(x: Any) -> bool:
    return isinstance(x, Iterable) and not isinstance(x, str)


def sacreformat(items: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """lm-eval's ``_sacreformat``: hypotheses and reference streams ``[n_refs][n_items]``."""
    refs = [it[0] for it in items]
    preds = [it[1] for it in items]
    if not _is_seq(refs[0]):
        refs = [[r] for r in refs]
    streams = [list(s) for s in zip(*refs, strict=False)]
    if _is_seq(preds[0]):
        if len(preds[0]) != 1:
            raise ValueError(f"Pred must be a str, was {preds[0]}")
        preds = [p[0] for p in preds]
    return list(preds), streams


def segment_stats(name: str, items: Sequence[Any]) -> tuple[Any, np.ndarray]:
    """The sacrebleu metric object and its per-segment statistics, shape ``(n, n_stats)``."""
    metric = _metric(name)
    hyps, refs = sacreformat(items)
    metric._check_corpus_score_args(hyps, refs)
    stats = metric._extract_corpus_statistics(hyps, refs)
    dtype = np.float64 if name == "ter" else np.int64
    return metric, np.asarray(stats, dtype=dtype)


def score_from_stats(metric: Any, summed: np.ndarray) -> float:
    """Corpus score from summed statistics (as sacrebleu's ``_aggregate_and_compute``)."""
    return float(metric._compute_score_from_stats(summed.tolist()).score)


def corpus_score(name: str, items: Sequence[Any]) -> float:
    """Corpus score of ``items`` (``bleu``, ``chrf``, ``chrf++`` or ``ter``)."""
    metric, stats = segment_stats(name, items)
    return score_from_stats(metric, stats.sum(axis=0))


def bootstrap_replicates(name: str, items: Sequence[Any], seeds: np.ndarray) -> np.ndarray:
    """One corpus score per seed, each from a with-replacement resample of the items."""
    metric, stats = segment_stats(name, items)
    n = stats.shape[0]
    out = np.empty(seeds.shape[0], dtype=np.float64)
    for r, seed in enumerate(seeds):
        counts = np.bincount(np.random.default_rng(int(seed)).integers(0, n, n), minlength=n)
        out[r] = score_from_stats(metric, counts.astype(stats.dtype) @ stats)
    return out
