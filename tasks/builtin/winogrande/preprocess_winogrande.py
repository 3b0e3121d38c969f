"""Winogrande as a partial-evaluation (multiple-input) task."""

from __future__ import annotations

from typing import Any


def _blank(doc: dict[str, Any]) -> int:
    return doc["sentence"].index("_")


_GOLD = {"1": 0, "2": 1}


def doc_to_text(doc: dict[str, Any]) -> int:
    """The gold option index (answer '1' -> 0, '2' -> 1)."""
    return _GOLD[doc["answer"]]


def doc_to_target(doc: dict[str, Any]) -> str:
    """The sentence after the blank, stripped (scored under each filled-in context)."""
    return doc["sentence"][_blank(doc) + 1 :].strip()


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """The sentence up to the blank, completed with each option."""
    head = doc["sentence"][: _blank(doc)]
    return [head + doc["option1"], head + doc["option2"]]
