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
    replicate values for ``(items, iters, seed)``), ``"custom"`` (``stderr_fn(items)``, e.g.
    ``acc_all``) or ``None`` (lm-eval reports ``"N/A"``). ``max_iters`` caps bootstrap
    iterations (lm-eval: 100 for bleu/chrf/chrf++/ter).
    """

    name: str
    fn: Callable[[Any], float]
    stderr: str | None = None
    replicates: Replicates | None = None
    max_iters: int | None = None
    stderr_fn: Callable[[Any], float] | None = None


@dataclass(frozen=True)
class MetricSpec:
    """A metric: default aggregation and direction (lm-eval ``register_metric`` defaults) and
    the output types whose built-in scoring produces it.

    ``kind`` says how a document's value is computed: ``"builtin"`` (the task engine's own
    per-output-type scoring) or ``"code"`` (generated programs run by ``evalfleet.execution``,
    batched over the task's documents).
    """

    name: str
    aggregation: str
    higher_is_better: bool
    output_types: tuple[str, ...] = ()
    kind: str = "builtin"


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
    AggregationSpec("acc_all", ag.agg_acc_all, "custom", stderr_fn=ag.acc_all_stderr),
    _sacre("bleu"),
    _sacre("chrf"),
    _sacre("chrf++"),
    _sacre("ter"),
]

_LL, _MC = "loglikelihood", "multiple_choice"
_ROLL, _GEN = "loglikelihood_rolling", "generate_until"
# On generate_until, lm-eval calls a passthrough metric with one ``[gold, result]`` pair, which
# its aggregation then receives: every metric below whose lm-eval function is a passthrough
# lists _GEN among its output types for that reason.
_METRICS = [
    MetricSpec("acc", "mean", True, (_LL, _MC, _GEN)),
    MetricSpec("acc_norm", "mean", True, (_MC, _GEN)),
    MetricSpec("acc_bytes", "mean", True, (_MC, _GEN)),
    MetricSpec("acc_mutual_info", "mean", True, (_MC, _GEN)),
    # lm-eval registers acc_all but its YAML scoring never emits it; evalfleet emits
    # (pred, doc) items for multiple-choice tasks, aggregated per question as lm-eval's acc_all.
    MetricSpec("acc_all", "acc_all", True, (_MC,)),
    MetricSpec("exact_match", "mean", True, (_MC, _GEN)),
    MetricSpec("likelihood", "mean", True, (_MC, _GEN)),
    MetricSpec("perplexity", "perplexity", False, (_LL, _GEN)),
    MetricSpec("word_perplexity", "weighted_perplexity", False, (_ROLL, _GEN)),
    MetricSpec("byte_perplexity", "weighted_perplexity", False, (_ROLL, _GEN)),
    MetricSpec("bits_per_byte", "bits_per_byte", False, (_ROLL, _GEN)),
    MetricSpec("brier_score", "brier_score", False, (_MC, _GEN)),
    MetricSpec("f1", "f1", True, (_MC, _GEN)),
    MetricSpec("mcc", "matthews_corrcoef", True, (_MC, _GEN)),
    MetricSpec("bleu", "bleu", True, (_GEN,)),
    MetricSpec("chrf", "chrf", True, (_GEN,)),
    MetricSpec("chrf++", "chrf++", True, (_GEN,)),
    MetricSpec("ter", "ter", False, (_GEN,)),
    MetricSpec("bypass", "bypass", True, (_LL, _MC, _ROLL, _GEN)),
    # code generation: pass@k over `repeats` samples (humaneval/mbpp's code_eval)
    MetricSpec("pass_at_k", "mean", True, (_GEN,), kind="code"),
    MetricSpec("pass_at_1", "mean", True, (_GEN,), kind="code"),
]

#: metrics computed when a task has no ``metric_list`` (lm-eval's DEFAULT_METRIC_REGISTRY)
DEFAULT_METRICS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    _LL: ("perplexity", "acc"),
    _ROLL: ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    _MC: ("acc", "acc_norm"),
    _GEN: ("exact_match",),
})

#: aggregation name -> spec
AGGREGATIONS: Mapping[str, AggregationSpec] = MappingProxyType({a.name: a for a in _AGGS})
#: metric name -> spec (default aggregation, higher_is_better)
METRICS: Mapping[str, MetricSpec] = MappingProxyType({m.name: m for m in _METRICS})


#: lm-eval's aggregation functions (``lm_eval.api.metrics``) by ``__name__`` -> our spec name;
#: a Python task's ``aggregation()`` may return them (or evalfleet.tasks.api's equivalents).
_CALLABLE_NAMES = {"mean": "mean", "median": "median", "nanmean": "nanmean",
                   "perplexity": "perplexity", "weighted_perplexity": "weighted_perplexity",
                   "bits_per_byte": "bits_per_byte", "f1_score": "f1",
                   "matthews_corrcoef": "matthews_corrcoef", "bleu": "bleu", "chrf": "chrf",
                   "chrfpp": "chrf++", "ter": "ter", "brier_score": "brier_score",
                   "bypass": "bypass", "acc_all": "acc_all"}
_KNOWN_MODULES = ("lm_eval.api.metrics", "evalfleet.tasks.api")


def aggregation_for_callable(fn: Callable) -> str | None:
    """The registered aggregation a callable stands for, when it is one of lm-eval's (or
    evalfleet's task API's) aggregation functions; None for a user's own function."""
    module = getattr(fn, "__module__", "") or ""
    if not module.startswith(_KNOWN_MODULES):
        return None
    return _CALLABLE_NAMES.get(getattr(fn, "__name__", ""))


def get_metric(name: str) -> MetricSpec:
    """The spec of metric ``name``; KeyError lists the known names."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}") from None


def get_aggregation(name: str) -> AggregationSpec:
    """The spec of aggregation ``name``; KeyError lists the known names."""
    try:
        return AGGREGATIONS[name]
    except KeyError:
        raise KeyError(f"unknown aggregation {name!r}; known: {sorted(AGGREGATIONS)}") from None
