"""Metric configuration of a task: ``metric_list`` entries checked against the one metric
registry (``evalfleet.scoring.registry``), or the output type's defaults when absent.

A metric evalfleet cannot compute is an error when the task loads, naming the task file, the
entry and the metric: nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evalfleet.scoring.registry import (
    AGGREGATIONS,
    DEFAULT_METRICS,
    GROUPS,
    METRICS,
    MetricSpec,
    aggregation_for_callable,
)
from evalfleet.tasks.errors import config_error

_RESERVED = ("metric", "aggregation", "higher_is_better", "hf_evaluate")


@dataclass
class MetricConfig:
    """One metric of a task: name, aggregation (name or callable), direction and kwargs."""

    name: str
    aggregation: str | Callable | None
    higher_is_better: bool | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    hf_evaluate: bool = False
    fn: Callable | None = None  # a callable given as `metric: !function ...`
    spec: MetricSpec | None = None  # the registry entry, when the name is a registered metric

    @property
    def is_code(self) -> bool:
        """Whether the metric runs generated programs (pass@k)."""
        return (self.spec is not None and self.spec.kind == "code") or bool(
            getattr(self.fn, "runs_code", False))


def default_metric(name: str) -> MetricConfig:
    """The registry defaults for a metric name (KeyError when unregistered)."""
    spec = METRICS[name]
    return MetricConfig(name=name, aggregation=spec.aggregation_name,
                        higher_is_better=spec.higher_is_better, spec=spec)


def _aggregation(entry: dict, spec: MetricSpec | None, fn: Callable | None, where: str,
                 source: Any) -> str | Callable:
    agg = entry.get("aggregation")
    if agg is None:
        if spec is not None:
            return spec.aggregation_name
        named = aggregation_for_callable(fn) if fn is not None else None
        if named is None:
            raise config_error(source, where, f"metric {entry['metric']!r} has no registered "
                               "default aggregation; give 'aggregation:' (e.g. mean)")
        return named
    if callable(agg):
        return agg
    if not isinstance(agg, str) or agg not in AGGREGATIONS:
        raise config_error(source, f"{where}.aggregation", f"unknown aggregation {agg!r}; "
                           f"known: {', '.join(sorted(AGGREGATIONS))}")
    return agg


def parse_metric_list(raw: Any, output_type: str, source: Any, *,
                      custom_results: bool = False) -> list[MetricConfig]:
    """Normalize ``metric_list`` (or the output type's defaults when absent).

    ``custom_results`` (the task has its own ``process_results``) allows any metric name: the
    function computes it, so only its aggregation must be known.
    """
    if raw is None:
        return [default_metric(n) for n in DEFAULT_METRICS[output_type]]
    if not isinstance(raw, list):
        raise config_error(source, "metric_list", "expected a list of {metric: ...} entries")
    out = []
    for i, entry in enumerate(raw):
        where = f"metric_list[{i}]"
        if not isinstance(entry, dict) or "metric" not in entry:
            raise config_error(source, where, "entry must be a mapping with 'metric'")
        metric = entry["metric"]
        fn = None
        if callable(metric):
            fn, metric = metric, metric.__name__
        elif not isinstance(metric, str):
            raise config_error(source, f"{where}.metric", f"expected a name, got {metric!r}")
        spec = METRICS.find(metric)
        group = GROUPS.get(output_type)
        if fn is not None and not custom_results and not group.per_doc \
                and metric not in group.metrics:
            raise config_error(
                source, f"{where}.metric", f"a '!function' metric is not computed for "
                f"output_type {output_type} (lm-eval 0.4.13 leaves it out); compute "
                f"{metric!r} in the task's process_results")
        if fn is None and not custom_results:
            if spec is None:
                raise config_error(
                    source, f"{where}.metric", f"unknown metric {metric!r}: evalfleet computes "
                    f"{', '.join(sorted(METRICS))}, a '!function' metric, or any name a "
                    "custom process_results returns")
            if output_type not in spec.output_types:
                raise config_error(
                    source, f"{where}.metric", f"metric {metric!r} is not computed for "
                    f"output_type {output_type} (it is for {', '.join(spec.output_types)})")
        hib = entry.get("higher_is_better")
        if hib is not None and not isinstance(hib, bool):
            raise config_error(source, f"{where}.higher_is_better",
                               f"expected true or false, got {hib!r}")
        if hib is None and spec is not None:
            hib = spec.higher_is_better
        out.append(MetricConfig(
            name=metric,
            aggregation=_aggregation(entry, spec, fn, where, source),
            higher_is_better=hib,
            kwargs={k: v for k, v in entry.items() if k not in _RESERVED},
            hf_evaluate=entry.get("hf_evaluate") is True,
            fn=fn,
            spec=spec,
        ))
    return out
