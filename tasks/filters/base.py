"""Filter base class and the pipeline that chains filters (lm-eval's FilterEnsemble)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


class Filter:
    """Maps the per-request response lists of a whole task to filtered values."""

    def __init__(self, **kwargs: Any) -> None:
        pass

    def apply(self, resps: Iterable[Sequence[Any]], docs: Sequence[dict]) -> Iterable[Any]:
        """Return one filtered entry per input entry, in order."""
        return resps


@dataclass
class FilterPipeline:
    """A named, ordered list of filters: ``[(name or filter class, kwargs), ...]``."""

    name: str
    filters: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def apply(self, resps: Sequence[Sequence[Any]], docs: Sequence[dict] | None = None) -> list:
        """Run the filters in order over all requests' responses."""
        from evalfleet.tasks.filters import get_filter

        docs = list(docs) if docs is not None else [{} for _ in resps]
        out: Iterable[Any] = [list(r) for r in resps]
        for name, kwargs in self.filters:
            cls = name if callable(name) else get_filter(name)  # a !function filter class
            out = cls(**kwargs).apply(out, docs)
        return list(out)
