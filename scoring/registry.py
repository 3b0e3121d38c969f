"""The one metric registry: metrics, the metric groups that compute them per output type, and
aggregations (with their stderr rules). Adding a metric or aggregation is adding one entry
(``register_metric`` / ``register_aggregation``, or one line below)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import replace as replace_fields
from types import MappingProxyType
from typing import Any

import numpy as np

from evalfleet.common.registry import DuplicateNameError, Registry
from evalfleet.common.request_kind import OutputType

from . import aggregations as ag
from . import bootstrap as bs
from . import builtin_metrics as bm
from . import confusion as cm
from .doc_batch import Column, DocBatch, MetricEntry
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


#: a metric's value for one document: ``per_doc(gold, prediction, **kwargs)``
DocMetric = Callable[..., Any]
#: one value per document for all of a task's documents at once:
#: ``batch(golds, predictions, allow_code=..., **kwargs)`` (code metrics run every program once)
BatchMetric = Callable[..., list[Any]]


@dataclass(frozen=True)
class MetricSpec:
    """A metric: how a document's value is computed, its default aggregation (a registered
    aggregation's name) and direction (lm-eval ``register_metric`` defaults), and the output
    types a task may name it for.

    On the output types in ``per_doc_types`` (generate_until by default, lm-eval's call of
    every metric function) a document's value is ``per_doc(gold, prediction, **kwargs)``;
    ``per_doc`` None is lm-eval's passthrough: the item is the pair ``[gold, prediction]``.
    ``any_gold(golds, prediction, **kwargs)`` scores a multiple-target document at once (else
    each gold is scored alone and any hit counts, as lm-eval does); ``batch`` computes every
    document at once (``kind == "code"``: pass@k runs the task's programs in parallel).
    ``keeps_gold_type``: naming this metric keeps a generation's gold uncast (lm-eval's
    ``bypass``). On other output types a metric is computed by its output type's
    :class:`MetricGroup`. ``register_metric`` also registers ``aggregation`` when it is an
    :class:`AggregationSpec` (a metric with its own corpus aggregation and stderr rule).
    """

    name: str
    aggregation: str | AggregationSpec
    higher_is_better: bool
    output_types: tuple[str, ...] = ()
    kind: str = "builtin"
    per_doc: DocMetric | None = None
    per_doc_types: tuple[str, ...] = (OutputType.GENERATE_UNTIL,)
    any_gold: Callable[..., float] | None = None
    batch: BatchMetric | None = None
    keeps_gold_type: bool = False

    @property
    def aggregation_name(self) -> str:
        """The name of the metric's default aggregation."""
        agg = self.aggregation
        return agg.name if isinstance(agg, AggregationSpec) else agg


@dataclass(frozen=True)
class MetricGroup:
    """The metrics of one output type computed together (lm-eval's ``process_results`` for
    that output type; lighteval's ``MetricGrouping``).

    ``compute(batch, configs)`` returns one :data:`Column` per config it computes, in the
    configs' order; a config it does not compute is left out, as lm-eval leaves it out (e.g.
    ``bypass`` on multiple_choice). ``metrics`` are the registered names it computes itself
    (the multiple-choice group: one Numba kernel gives acc, acc_norm, ... at once).
    """

    output_type: str
    metrics: tuple[str, ...]
    compute: Callable[[DocBatch, Sequence[MetricEntry]], list[Column]]
    #: whether it scores per-document functions from each document's (gold, prediction): a
    #: task's ``!function`` metric (a task loading one where this is False is refused)
    per_doc: bool = False


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

_LL, _MC = OutputType.LOGLIKELIHOOD, OutputType.MULTIPLE_CHOICE
_ROLL, _GEN = OutputType.LOGLIKELIHOOD_ROLLING, OutputType.GENERATE_UNTIL
# On generate_until, lm-eval calls a passthrough metric with one ``[gold, result]`` pair, which
# its aggregation then receives: every metric below whose lm-eval function is a passthrough
# lists _GEN among its output types for that reason (and has no per_doc).
_METRICS = [
    MetricSpec("acc", "mean", True, (_LL, _MC, _GEN)),
    MetricSpec("acc_norm", "mean", True, (_MC, _GEN)),
    MetricSpec("acc_bytes", "mean", True, (_MC, _GEN)),
    MetricSpec("acc_mutual_info", "mean", True, (_MC, _GEN)),
    # lm-eval registers acc_all but its YAML scoring never emits it; evalfleet emits
    # (pred, doc) items for multiple-choice tasks, aggregated per question as lm-eval's acc_all.
    MetricSpec("acc_all", "acc_all", True, (_MC,)),
    MetricSpec("exact_match", "mean", True, (_MC, _GEN), per_doc=bm.exact_match_doc,
               any_gold=bm.exact_match_any_gold),
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
    MetricSpec("bypass", "bypass", True, (_LL, _MC, _ROLL, _GEN), per_doc=bm.bypass_doc,
               keeps_gold_type=True),
    # code generation: pass@k over `repeats` samples (humaneval/mbpp's code_eval)
    MetricSpec("pass_at_k", "mean", True, (_GEN,), kind="code",
               batch=bm.code_batch("pass_at_k")),
    MetricSpec("pass_at_1", "mean", True, (_GEN,), kind="code",
               batch=bm.code_batch("pass_at_1")),
]

_GROUPS = [
    MetricGroup(_LL, ("perplexity", "acc"), bm.loglikelihood_columns),
    MetricGroup(_ROLL, ("word_perplexity", "byte_perplexity", "bits_per_byte"),
                bm.rolling_columns),
    MetricGroup(_MC, bm.CHOICE_METRICS, bm.multiple_choice_columns, per_doc=True),
    MetricGroup(_GEN, (), bm.generation_columns, per_doc=True),
]

#: metrics computed when a task has no ``metric_list`` (lm-eval's DEFAULT_METRIC_REGISTRY)
DEFAULT_METRICS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    _LL: ("perplexity", "acc"),
    _ROLL: ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    _MC: ("acc", "acc_norm"),
    _GEN: ("exact_match",),
})

#: aggregation name -> spec
AGGREGATIONS: Registry[AggregationSpec] = Registry("aggregation", ((a.name, a) for a in _AGGS))
#: metric name -> spec (how it is computed, default aggregation, higher_is_better)
METRICS: Registry[MetricSpec] = Registry("metric", ((m.name, m) for m in _METRICS))
#: output type -> the group computing its metrics
GROUPS: Registry[MetricGroup] = Registry("output type", ((g.output_type, g) for g in _GROUPS))


def register_aggregation(spec: AggregationSpec, *, replace: bool = False) -> AggregationSpec:
    """Add an aggregation (its corpus function and stderr rule)."""
    return AGGREGATIONS.register(spec.name, spec, replace=replace)


def register_metric(spec: MetricSpec, *, replace: bool = False) -> MetricSpec:
    """Add a metric; an :class:`AggregationSpec` given as its aggregation is registered with
    it (both names must be free unless ``replace``)."""
    agg = spec.aggregation
    if spec.name in METRICS and not replace:
        raise DuplicateNameError(f"metric {spec.name!r} is already registered; pick another "
                                 "name or pass replace=True")
    if isinstance(agg, AggregationSpec):
        register_aggregation(agg, replace=replace)
        spec = replace_fields(spec, aggregation=agg.name)
    else:
        AGGREGATIONS.get(agg)  # an unknown aggregation name fails here, naming the known ones
    return METRICS.register(spec.name, spec, replace=replace)


def unregister_metric(name: str) -> MetricSpec:
    """Remove a metric (its aggregation stays registered)."""
    return METRICS.unregister(name)


def group_for(output_type: str) -> MetricGroup:
    """The metric group of an output type."""
    return GROUPS.get(output_type)


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
    return METRICS.get(name)


def get_aggregation(name: str) -> AggregationSpec:
    """The spec of aggregation ``name``; KeyError lists the known names."""
    return AGGREGATIONS.get(name)
