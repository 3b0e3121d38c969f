"""Transformation filters: lowercase, uppercase, map, remove_whitespace."""

from __future__ import annotations

import re
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


_NER_LABELS = {"person": "PER", "location": "LOC", "organization": "ORG", "counties": "LOC",
               "places": "LOC", "people": "PER", "persons": "PER", "company": "ORG",
               "country": "LOC", "continent": "LOC", "time": "DATE", "date": "DATE",
               "per": "PER", "loc": "LOC", "org": "ORG"}
_SPAN = re.compile(r"\b(PER|LOC|ORG|DATE):\s*([^$]+)")


def _normalise_labels(text: str) -> str:
    text = text.lower()
    for word, label in _NER_LABELS.items():  # rewrite labels (the word before a ":") only
        text = re.sub(rf"\b{re.escape(word)}\s*:", f"{label}:", text)
    return "$".join(text.split("$$")).rstrip("$")


def format_spans(text: str) -> str:
    """``label: entity $ label: entity`` from a free-form NER answer ('none' entities dropped)."""
    text = _normalise_labels(text.lower()).replace("\n", "$").strip()
    spans = []
    for label, values in _SPAN.findall(text):
        for entity in (v.strip() for v in values.split(",")):
            if entity.lower() != "none":
                spans.append(f"{label.lower()}: {entity}")
    return " $ ".join(spans)


class SpanFilter(Filter):
    """``format_span``: named entities normalised for span-level scoring."""

    def __init__(self, **kwargs: Any) -> None:
        pass

    def apply(self, resps, docs):
        return [[format_spans(x) for x in r] for r in resps]
