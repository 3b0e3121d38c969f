"""The one metric / aggregation registry. Adding a metric or aggregation = adding one entry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from . import aggregations as ag
from . import bootstrap as bs
from . import confusion as cm
from .reductions import as_f64

Replicates = Callable[[Any, int, int], np.ndarray]


@dataclass(frozen=True)
class AggregationSpec:
    """How to aggregate items and estimate the aggregate's standard error.

    ``stderr`` is ``"mean"`` (closed form), ``"bootstrap"`` (``replicates`` gives bootstrap
    replicate values for ``(items, iters, seed)``) or ``None`` (lm-eval reports ``"N/A"``).
    ``max_iters`` caps bootstrap iterations (lm-eval: 100 for bleu/chrf/chrf++/ter).
    """

    name: str
    fn: Callable[[Any], float]
    stderr: str | None = None
    replicates: Replicates | None = None
    max_iters: int | None = None


@dataclass(frozen=True)
class MetricSpec:
    """A metric's default aggregation and direction (lm-eval ``register_metric`` defaults)."""

    name: str
    aggregation: str
    higher_is_better: bool


def _values(stat: int) -> Replicates:
    return lambda items, iters, seed: bs.value_replicates(as_f64(items), stat, iters, seed)


def _mcc_reps(items, iters: int, seed: int) -> np.ndarray:
    _, c = cm.confusion(cm.pairs_array(items))
    return bs.count_replicates(c, bs.MCC, iters, seed)


def _f1_reps(items, iters: int, seed: int) -> np.ndarray:
    c = cm.binary_confusion(cm.pairs_array(items))
    return bs.count_replicates(c, bs.F1_BINARY, iters, seed)


def _f1_macro_reps(items, iters: int, seed: int) -> np.ndarray:
    _, c = cm.confusion(cm.pairs_array(items))
    return bs.count_replicates(c, bs.F1_MACRO, iters, seed)


def _sacre(name: str) -> AggregationSpec:
    return AggregationSpec(
        name,
        ag.make_sacre(name),
        "bootstrap",
        lambda items, iters, seed: bs.sacre_replicates(name, items, iters, seed),
        max_iters=100,
    )


_AGGS = [
    AggregationSpec("mean", ag.agg_mean, "mean"),
    AggregationSpec("median", ag.agg_median, "bootstrap", _values(bs.MEDIAN)),
    AggregationSpec("nanmean", ag.agg_nanmean, "bootstrap", _values(bs.NANMEAN)),
    AggregationSpec("perplexity", ag.agg_perplexity, "bootstrap", _values(bs.PERPLEXITY)),
    AggregationSpec("weighted_perplexity", ag.agg_weighted_perplexity),
    AggregationSpec("bits_per_byte", ag.agg_bits_per_byte),
    AggregationSpec("f1", ag.agg_f1, "bootstrap", _f1_reps),
    AggregationSpec("f1_macro", ag.agg_f1_macro, "bootstrap", _f1_macro_reps),
    AggregationSpec("matthews_corrcoef", ag.agg_mcc, "bootstrap", _mcc_reps),
    AggregationSpec("mcc", ag.agg_mcc, "bootstrap", _mcc_reps),
    AggregationSpec("brier_score", ag.agg_brier_score),
    AggregationSpec("bypass", ag.agg_bypass),
    _sacre("bleu"),
    _sacre("chrf"),
    _sacre("chrf++"),
    _sacre("ter"),
]

_METRICS = [
    MetricSpec("acc", "mean", True),
    MetricSpec("acc_norm", "mean", True),
    MetricSpec("acc_bytes", "mean", True),
    MetricSpec("acc_mutual_info", "mean", True),
    MetricSpec("acc_all", "mean", True),
    MetricSpec("exact_match", "mean", True),
    MetricSpec("likelihood", "mean", True),
    MetricSpec("perplexity", "perplexity", False),
    MetricSpec("word_perplexity", "weighted_perplexity", False),
    MetricSpec("byte_perplexity", "weighted_perplexity", False),
    MetricSpec("bits_per_byte", "bits_per_byte", False),
    MetricSpec("brier_score", "brier_score", False),
    MetricSpec("f1", "f1", True),
    MetricSpec("mcc", "matthews_corrcoef", True),
    MetricSpec("bleu", "bleu", True),
    MetricSpec("chrf", "chrf", True),
    MetricSpec("chrf++", "chrf++", True),
    MetricSpec("ter", "ter", False),
    MetricSpec("bypass", "bypass", True),
]

#: aggregation name -> spec
AGGREGATIONS: Mapping[str, AggregationSpec] = MappingProxyType({a.name: a for a in _AGGS})
#: metric name -> spec (default aggregation, higher_is_better)
METRICS: Mapping[str, MetricSpec] = MappingProxyType({m.name: m for m in _METRICS})


def get_aggregation(name: str) -> AggregationSpec:
    """The spec of aggregation ``name``; KeyError lists the known names."""
    try:
        return AGGREGATIONS[name]
    except KeyError:
        raise KeyError(f"unknown aggregation {name!r}; known: {sorted(AGGREGATIONS)}") from None
