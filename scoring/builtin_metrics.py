"""How the built-in metrics are computed: the groups of the log-likelihood output types (the
multiple-choice Numba kernel gives acc, acc_norm, acc_bytes, ... at once) and the per-document
functions of generation metrics, exactly as lm-eval 0.4.13's ``process_results``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evalfleet.common.request_kind import OutputType

from .doc_batch import Column, DocBatch, MetricEntry
from .loglik import count_bytes, count_words
from .multiple_choice import KERNEL_METRICS, multiple_choice_metrics
from .per_document import generation_columns, metric_value
from .text import exact_match

__all__ = ["CHOICE_METRICS", "generation_columns"]


def exact_match_doc(gold: Any, result: Any, **kwargs: Any) -> float:
    """lm-eval's ``exact_match`` of one generation (its normalisation options as kwargs)."""
    return float(exact_match([result], [gold], **kwargs)[0])


def exact_match_any_gold(golds: Sequence[Any], result: Any, **kwargs: Any) -> float:
    """lm-eval's multiple-target ``exact_match``: all golds at once, 1 when any matches."""
    scores = exact_match([str(result)] * len(golds), [str(g) for g in golds], **kwargs)
    return 1.0 if float(np.mean(scores)) > 0.0 else 0.0


def bypass_doc(gold: Any, result: Any, **kwargs: Any) -> None:
    """lm-eval's ``bypass``: no value."""
    return None


def code_batch(name: str) -> Callable[..., list[Any]]:
    """The batch form of evalfleet.execution's code metric ``name`` (pass@k)."""
    def batch(golds: Sequence[Any], results: Sequence[Any], **kwargs: Any) -> list[Any]:
        from evalfleet.execution import CODE_METRICS

        return CODE_METRICS[name].batch(list(golds), list(results), **kwargs)
    return batch


def _columns(configs: Sequence[MetricEntry], items: dict[str, Callable[[int], Any]],
             n_docs: int) -> list[Column]:
    """One column per config the group computes (``items[name](d)`` for document ``d``)."""
    return [(c, [items[c.name](d) for d in range(n_docs)]) for c in configs if c.name in items]


# -- loglikelihood / loglikelihood_rolling ----------------------------------------------------
LOGLIKELIHOOD_METRICS = ("perplexity", "acc")
ROLLING_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def loglikelihood_columns(batch: DocBatch, configs: Sequence[MetricEntry]) -> list[Column]:
    """``perplexity`` (the ll) and ``acc`` (is_greedy) of each document's one request."""
    pairs = [results[0] for results in batch.results]
    items: dict[str, Callable[[int], Any]] = {
        "perplexity": lambda d: pairs[d][0], "acc": lambda d: int(pairs[d][1])}
    return _columns(configs, items, len(pairs))


def rolling_columns(batch: DocBatch, configs: Sequence[MetricEntry]) -> list[Column]:
    """``(ll, words)`` / ``(ll, bytes)`` items of each document's target."""
    if not any(c.name in ROLLING_METRICS for c in configs):
        return []
    lls = [results[0] for results in batch.results]
    targets = [batch.task.doc_target(doc) for doc in batch.docs]
    words = [count_words(t) for t in targets]
    nbytes = [count_bytes(t) for t in targets]
    items: dict[str, Callable[[int], Any]] = {
        "word_perplexity": lambda d: (lls[d], words[d]),
        "byte_perplexity": lambda d: (lls[d], nbytes[d]),
        "bits_per_byte": lambda d: (lls[d], nbytes[d])}
    return _columns(configs, items, len(lls))


# -- multiple_choice ---------------------------------------------------------------------------
#: items built from a document's kernel prediction: (gold, pred) for the confusion metrics,
#: (gold, choice lls) for likelihood, (pred, doc) for acc_all (aggregated per question)
_ITEM_METRICS = ("f1", "mcc", "likelihood", "acc_all")
#: what the multiple-choice group computes
CHOICE_METRICS = (*KERNEL_METRICS, *_ITEM_METRICS)


def _computed_per_doc(config: MetricEntry) -> bool:
    """A metric the group scores per document from (gold, pred): a ``!function`` metric, or a
    registered one whose ``per_doc`` is declared for multiple_choice."""
    spec = config.spec
    return config.fn is not None or (
        spec is not None and spec.per_doc is not None
        and OutputType.MULTIPLE_CHOICE in spec.per_doc_types)


def multiple_choice_columns(batch: DocBatch, configs: Sequence[MetricEntry]) -> list[Column]:
    """The kernel's metrics for every document at once, the items built from its prediction,
    and per-document metrics of ``(gold, pred)``: gold is the document's gold index (the list
    of indices for multiple targets), pred the argmax of the choices' loglikelihoods."""
    task, docs, per_doc_results = batch.task, batch.docs, batch.results
    names = [c.name for c in configs]
    choices = [task.doc_choices(doc) or [] for doc in docs]
    mutual = "acc_mutual_info" in names
    lls_l, greedy_l, uncond_l = [], [], []
    choice_offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    gold_values: list[int] = []
    gold_offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    golds_of: list[Any] = []
    for d, (doc, doc_choices, results) in enumerate(
            zip(docs, choices, per_doc_results, strict=True)):
        n = len(doc_choices)
        lls_l += [r[0] for r in results[:n]]
        greedy_l += [r[1] for r in results[:n]]
        if mutual:
            uncond_l += [r[0] for r in results[n:2 * n]]
        choice_offsets[d + 1] = choice_offsets[d] + n
        gold = task.doc_gold(doc)
        golds = list(gold) if isinstance(gold, list | tuple) else [gold]
        golds_of.append([int(g) for g in golds] if isinstance(gold, list | tuple) else int(gold))
        gold_values.extend(int(g) for g in golds)
        gold_offsets[d + 1] = gold_offsets[d] + len(golds)
    flat_choices = [c for cs in choices for c in cs]
    chars = np.array([float(len(c)) for c in flat_choices], dtype=np.float64)
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in flat_choices], dtype=np.float64)
    kernel = [m for m in names if m in KERNEL_METRICS]
    computed = multiple_choice_metrics(
        np.asarray(lls_l, dtype=np.float64), np.asarray(greedy_l, dtype=np.bool_),
        choice_offsets, np.asarray(gold_values, dtype=np.int64), gold_offsets, chars, nbytes,
        [*kernel, "pred"],
        lls_unconditional=np.asarray(uncond_l, dtype=np.float64) if mutual else None,
    )
    preds = [int(p) for p in computed["pred"]]

    def first_gold(d: int) -> int:
        return gold_values[gold_offsets[d]]

    items: dict[str, Callable[[int], Any]] = {
        name: (lambda d, v=computed[name]: float(v[d])) for name in kernel}
    items.update({
        "f1": lambda d: (first_gold(d), preds[d]),
        "mcc": lambda d: (first_gold(d), preds[d]),
        "likelihood": lambda d: (first_gold(d),
                                 [r[0] for r in per_doc_results[d][:len(choices[d])]]),
        "acc_all": lambda d: (preds[d], docs[d]),
    })
    columns: list[Column] = []
    for config in configs:
        if config.name in items:
            columns.append((config, [items[config.name](d) for d in range(len(docs))]))
        elif _computed_per_doc(config):
            columns.append((config, [metric_value(config, golds_of[d], preds[d])
                                     for d in range(len(docs))]))
    return columns
