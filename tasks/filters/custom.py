"""The ``custom`` filter: a user function ``filter_fn(resps, docs)``."""

from __future__ import annotations

from evalfleet.tasks.filters.base import Filter


class CustomFilter(Filter):
    """Apply ``filter_fn(resps, docs)`` (given as ``!function`` in the YAML)."""

    def __init__(self, filter_fn, **kwargs) -> None:
        self.filter_fn = filter_fn

    def apply(self, resps, docs):
        return self.filter_fn(resps, docs)
