"""Metrics computed one document at a time from its gold and prediction: lm-eval 0.4.13's
generate_until scoring (every metric function called per document, passthrough pairs,
multiple targets) and ``!function`` metrics, whose errors are reported as theirs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from evalfleet.common.errors import EvalfleetError

from .doc_batch import Column, DocBatch, MetricEntry


class MetricError(RuntimeError):
    """A metric function failed on a document; the message names the metric."""


def _takes_keywords(fn: Callable, kwargs: Mapping[str, Any]) -> bool:
    """Whether ``fn`` accepts lm-eval's keyword call (``references=, predictions=``)."""
    try:
        inspect.signature(fn).bind(references=[], predictions=[], **kwargs)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): lm-eval's keyword call
        return True
    return True


def call_metric(fn: Callable, gold: Any, result: Any, kwargs: Mapping[str, Any],
                name: str | None = None) -> Any:
    """lm-eval's call of a metric function for one document: ``fn(references=[gold],
    predictions=[result], **kwargs)`` when its signature takes those keywords, else
    ``fn([gold, result])`` (a passthrough). The choice is made from the signature, never by
    retrying: an exception raised inside the function is a :class:`MetricError` naming it."""
    keywords = _takes_keywords(fn, kwargs)
    try:
        if keywords:
            return fn(references=[gold], predictions=[result], **kwargs)
        return fn([gold, result])
    except EvalfleetError:
        raise  # e.g. code execution refused: already a clear error of its own
    except Exception as exc:
        label = name or getattr(fn, "__name__", repr(fn))
        raise MetricError(f"metric {label!r} raised {type(exc).__name__}: {exc}") from exc


def metric_value(config: MetricEntry, gold: Any, prediction: Any) -> Any:
    """One metric's value for one gold: the task's ``!function``, the registered
    ``per_doc``, or lm-eval's passthrough pair ``[gold, prediction]``."""
    if config.fn is not None:
        return call_metric(config.fn, gold, prediction, config.kwargs, config.name)
    per_doc = config.spec.per_doc if config.spec is not None else None
    if per_doc is None:
        return [gold, prediction]
    return per_doc(gold, prediction, **config.kwargs)


def _any_gold_value(config: MetricEntry, golds: Sequence[Any], result: Any) -> float:
    """lm-eval's multiple-target rule: the metric's own ``any_gold`` when it has one, else
    each gold scored alone and any hit counts (a passthrough pair counts as one)."""
    spec = config.spec
    if config.fn is None and spec is not None and spec.any_gold is not None:
        return spec.any_gold(golds, result, **config.kwargs)
    scores = [metric_value(config, g, result) for g in golds]
    scores = [s[config.name] if isinstance(s, dict) else s for s in scores]
    return 1.0 if any(scores) else 0.0


def generation_gold(task: Any, doc: dict, result: Any, keep_type: bool) -> Any:
    """lm-eval's gold for a generation doc: the choice text, the list of targets, or the
    target cast to the result's type (kept as is when ``keep_type``: lm-eval's ``bypass``)."""
    gold = task.doc_target(doc)
    if task.cfg.doc_to_choice is not None:
        gold = (task.doc_choices(doc) or [])[gold]
    elif task.multiple_target:
        gold = list(gold)
    elif type(gold) is not type(result) and not (keep_type or isinstance(result, list)):
        gold = type(result)(gold)
    return gold


def code_values(config: MetricEntry, golds: Sequence[Any], results: Sequence[Any],
                allow_code: bool) -> list[Any]:
    """A code metric for every document at once (its programs run in parallel subprocesses),
    or per document for a user's code metric without a batch form."""
    from evalfleet.execution import allow_code_execution

    fn, spec = config.fn, config.spec
    with allow_code_execution(allow_code):
        if hasattr(fn, "batch"):
            return fn.batch(list(golds), list(results), **config.kwargs)
        if spec is not None and spec.batch is not None:
            return spec.batch(list(golds), list(results), **config.kwargs)
        return [call_metric(fn, g, r, config.kwargs, config.name)  # type: ignore[arg-type]
                for g, r in zip(golds, results, strict=True)]


def generation_columns(batch: DocBatch, configs: Sequence[MetricEntry]) -> list[Column]:
    """Every metric of a generate_until task, per document (lm-eval calls each metric's
    function with the document's gold and its first filtered response)."""
    task = batch.task
    results = [r[0] for r in batch.results]
    keep = any(c.spec is not None and c.spec.keeps_gold_type for c in configs)
    golds = [generation_gold(task, doc, result, keep)
             for doc, result in zip(batch.docs, results, strict=True)]
    columns: list[Column] = []
    for config in configs:
        if config.is_code:
            values = code_values(config, golds, results, batch.allow_code)
        elif task.multiple_target:
            values = [_any_gold_value(config, g if isinstance(g, list) else [g], r)
                      for g, r in zip(golds, results, strict=True)]
        else:
            values = [metric_value(config, g, r) for g, r in zip(golds, results, strict=True)]
        columns.append((config, values))
    return columns
