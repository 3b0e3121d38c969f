"""Transformation filters: lowercase, uppercase, map, remove_whitespace."""

from __future__ import annotations

from typing import Any

from evalfleet.tasks.filters.base import Filter


class LowercaseFilter(Filter):
    """Lower-case every response."""

    def apply(self, resps, docs):
        return [[x.lower() for x in r] for r in resps]


class UppercaseFilter(Filter):
    """Upper-case every response."""

    def apply(self, resps, docs):
        return [[x.upper() for x in r] for r in resps]


class MapFilter(Filter):
    """Map each response through ``mapping_dict`` (``default_value`` when absent)."""

    def __init__(self, mapping_dict: dict | None = None, default_value: Any = None) -> None:
        if mapping_dict is not None and not isinstance(mapping_dict, dict):
            raise TypeError("mapping_dict must be a mapping")
        self.mapping_dict = mapping_dict or {}
        self.default_value = default_value

    def apply(self, resps, docs):
        return [[self.mapping_dict.get(x, self.default_value) for x in r] for r in resps]


class WhitespaceFilter(Filter):
    """Strip leading and trailing whitespace."""

    def apply(self, resps, docs):
        return [[x.strip() for x in r] for r in resps]
