"""Registry of response filters (lm-eval names -> classes).

Adding a filter = one class in a family module + one entry in ``FILTERS`` (or one
``register_filter`` call).
"""

from __future__ import annotations

from evalfleet.common.registry import Registry
from evalfleet.tasks.filters.base import Filter, FilterPipeline
from evalfleet.tasks.filters.custom import CustomFilter
from evalfleet.tasks.filters.extraction import MultiChoiceRegexFilter, POSFilter, RegexFilter
from evalfleet.tasks.filters.selection import MajorityVoteFilter, TakeFirstFilter, TakeKFilter
from evalfleet.tasks.filters.transformation import (
    LowercaseFilter,
    MapFilter,
    SpanFilter,
    UppercaseFilter,
    WhitespaceFilter,
)

FILTERS: Registry[type[Filter]] = Registry("filter", {
    "take_first": TakeFirstFilter,
    "take_first_k": TakeKFilter,
    "majority_vote": MajorityVoteFilter,
    "regex": RegexFilter,
    "multi_choice_regex": MultiChoiceRegexFilter,
    "remove_whitespace": WhitespaceFilter,
    "lowercase": LowercaseFilter,
    "uppercase": UppercaseFilter,
    "map": MapFilter,
    "custom": CustomFilter,
    "regex_pos": POSFilter,
    "format_span": SpanFilter,
}.items())


def register_filter(name: str, cls: type[Filter], *, replace: bool = False) -> type[Filter]:
    """Add a filter class under ``name`` (a taken name is an error unless ``replace``)."""
    return FILTERS.register(name, cls, replace=replace)


def get_filter(name: str) -> type[Filter]:
    """The filter class registered as ``name`` (KeyError lists the known names)."""
    return FILTERS.get(name)


DEFAULT_PIPELINES = (("none", (("take_first", {}),)),)

__all__ = ["FILTERS", "Filter", "FilterPipeline", "get_filter", "register_filter"]
