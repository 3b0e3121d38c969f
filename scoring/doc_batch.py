"""What a metric group scores (a task's documents and their filtered results) and what it
returns (one column of per-document values per metric)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class MetricEntry(Protocol):
    """One metric of a task, as the groups read it (``tasks.metric_config.MetricConfig``)."""

    name: str
    kwargs: dict[str, Any]
    fn: Callable | None
    spec: Any  # the registered MetricSpec, None for a name only a !function gives

    @property
    def is_code(self) -> bool: ...


@dataclass
class DocBatch:
    """A task's documents and, per document, the filtered value of each of its requests
    (lm-eval's ``results``). ``allow_code`` lets code metrics run generated programs."""

    task: Any  # doc_choices / doc_gold / doc_target / multiple_target / cfg
    docs: list[dict]
    results: list[list[Any]]
    allow_code: bool = False


#: a metric's per-document values: (its entry, one value per document)
Column = tuple[MetricEntry, list[Any]]

