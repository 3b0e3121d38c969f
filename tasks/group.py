"""Group configuration (lm-eval's GroupConfig / AggMetricConfig)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalfleet.tasks.errors import config_error
from evalfleet.tasks.yaml_loader import FunctionRef

GROUP_KEYS = frozenset({"group", "group_alias", "task", "aggregate_metric_list", "metadata"})
_AGG_KEYS = frozenset({"metric", "filter_list", "aggregation", "weight_by_size"})


@dataclass
class AggregateMetric:
    """One ``aggregate_metric_list`` entry."""

    metric: str
    aggregation: str | Callable = "mean"
    weight_by_size: bool = True
    filter_list: list[str] | None = None


@dataclass
class GroupSpec:
    """A loaded group: its direct children (names, in order) and aggregation rules."""

    name: str
    alias: str | None = None
    children: list[str] = field(default_factory=list)
    aggregate_metric_list: list[AggregateMetric] = field(default_factory=list)
    version: str = "N/A"
    metadata: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @property
    def has_aggregation(self) -> bool:
        """Whether the group reports aggregated metrics (else it only shapes the table)."""
        return bool(self.aggregate_metric_list)


def parse_aggregates(raw: Any, source: Path | None) -> list[AggregateMetric]:
    """Normalize ``aggregate_metric_list`` (a mapping or a list of mappings)."""
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for i, item in enumerate(items):
        key = f"aggregate_metric_list[{i}]"
        if not isinstance(item, dict) or "metric" not in item:
            raise config_error(source, key, "entry must be a mapping with 'metric'")
        unknown = sorted(set(item) - _AGG_KEYS)
        if unknown:
            raise config_error(source, f"{key}.{unknown[0]}", "unknown key")
        if not isinstance(item["metric"], str) and not callable(item["metric"]) \
                and not isinstance(item["metric"], FunctionRef):
            raise config_error(source, f"{key}.metric", f"expected a metric name, got "
                               f"{item['metric']!r}")
        agg = item.get("aggregation", "mean")
        if agg != "mean" and not callable(agg):
            raise config_error(
                source, f"{key}.aggregation", f"only 'mean' is supported, got {agg!r}"
            )
        filters = item.get("filter_list")
        out.append(
            AggregateMetric(
                metric=item["metric"],
                aggregation=agg,
                weight_by_size=bool(item.get("weight_by_size", True)),
                filter_list=[filters] if isinstance(filters, str) else filters,
            )
        )
    return out


def make_group_spec(name: str, raw: dict[str, Any], meta: dict, source: Path | None) -> GroupSpec:
    """Build the GroupSpec (children are filled in by the loader)."""
    metadata = dict(raw.get("metadata") or {}) | meta
    version = str(metadata["version"]) if "version" in metadata else "N/A"
    return GroupSpec(
        name=name,
        alias=raw.get("group_alias"),
        aggregate_metric_list=parse_aggregates(raw.get("aggregate_metric_list"), source),
        version=version,
        metadata=metadata,
        source=source,
    )


def check_aggregates(spec: GroupSpec, leaves: Sequence[Any]) -> None:
    """Refuse an ``aggregate_metric_list`` metric that is no metric at all: not a registered
    metric and reported by none of the group's tasks (a typo), naming the file and entry. A
    registered metric the tasks do not report is kept, as lm-eval keeps it (its own groups
    aggregate ``acc`` over bleu tasks; the group then reports nothing for it). A task with its
    own ``process_results`` (or a Python class task) may report any name: then nothing is
    refused."""
    from evalfleet.scoring.registry import METRICS

    reported: set[str] = set()
    for task in leaves:
        if not hasattr(task, "metric_list") or getattr(task, "process_results_fn", None):
            return
        reported |= {m.name for m in task.metric_list}
    if not leaves:
        return
    for i, agg in enumerate(spec.aggregate_metric_list):
        if isinstance(agg.metric, str) and agg.metric not in reported \
                and agg.metric not in METRICS:
            raise config_error(
                spec.source, f"aggregate_metric_list[{i}].metric",
                f"unknown metric {agg.metric!r}: none of the tasks of group {spec.name!r} "
                f"reports it (they report {', '.join(sorted(reported))})")
