"""Reading the chosen answer out of a generated response, and the ``unparsed`` metric.

Two readings, each a filter pipeline of a formatted task:

* ``none`` is lm-eval 0.5.0.dev1's ``first_token`` scorer: the whole stripped response must be
  the answer (case and punctuation aside), so its ``exact_match`` equals 0.5's sample for sample;
* ``flexible-extract`` finds the answer in a free response: "... answer is X" (the last such
  phrase), a leading label ("B", "(B)", "**B**", "B. text"), or a choice's own text.

A response neither reading understands becomes ``INVALID`` and counts in ``unparsed``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import Any

from evalfleet.tasks.filters.base import Filter

#: the filtered value of a response in which no answer could be found
INVALID = "[invalid]"
_PUNCT = str.maketrans("", "", string.punctuation)
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
#: a label opening the whole response: "B", "(B)", "**B**", "B. text", "B) text", "B\ntext"
_LEADING = re.compile(r"^[\s*_(\[]*([A-Z])(?:$|[\s*_)\].:,]*$|[*_)\].:,\n])")
#: a label opening what follows "answer is": "C", "**C**", "C because ..."
_AFTER_ANSWER_IS = re.compile(r"^[\s*_(\[]*([A-Z])\b")
_PLACEHOLDER = re.compile(r"\[answer(?:_letter)?\]", re.IGNORECASE)


def normalize(text: str) -> str:
    """exact_match's comparison form with ``ignore_case`` and ``ignore_punctuation``."""
    return str(text).lower().translate(_PUNCT)


def strict_answer(response: str, labels: Sequence[str]) -> str:
    """The label the whole stripped response is (0.5's ``first_token`` reading), or INVALID."""
    said = normalize(response.strip())
    for label in labels:
        if said == normalize(label):
            return label
    return INVALID


def _choice_named(text: str, labels: Sequence[str], choices: Sequence[str]) -> str | None:
    """The label of the one choice ``text`` is, or that alone it contains; else None."""
    said = normalize(text).strip()
    if not said:
        return None
    for label, choice in zip(labels, choices, strict=True):
        if said in (normalize(label).strip(), normalize(choice).strip()):
            return label
    named = [label for label, choice in zip(labels, choices, strict=True)
             if normalize(choice).strip()
             and re.search(rf"\b{re.escape(normalize(choice).strip())}\b", said)]
    return named[0] if len(named) == 1 else None


def _leading_label(text: str, labels: Sequence[str], pattern: re.Pattern = _LEADING) -> str | None:
    match = pattern.match(text)
    return match.group(1) if match and match.group(1) in labels else None


def flexible_answer(response: str, labels: Sequence[str], choices: Sequence[str]) -> str:
    """The label a free response chooses, or INVALID."""
    letters = all(len(label) == 1 for label in labels)
    response = _PLACEHOLDER.sub("", response)  # the prompt's "[answer_letter]" echoed
    for said in reversed(_ANSWER_IS.findall(response)):
        found = (_leading_label(said, labels, _AFTER_ANSWER_IS) if letters else None) \
            or _choice_named(said, labels, choices)
        if found:
            return found
    text = response.strip()
    found = (_leading_label(text, labels) if letters else None) \
        or _choice_named(text, labels, choices)
    return found or INVALID


class AnswerFilter(Filter):
    """Maps each response to the label it chooses (``strict`` or ``flexible``), or INVALID.

    ``options(doc)`` gives the document's (labels, choice texts).
    """

    def __init__(self, options: Callable[[dict], tuple[list[str], list[str]]],
                 mode: str = "flexible") -> None:
        self.options = options
        self.mode = mode

    def _one(self, response: Any, doc: dict) -> str:
        labels, choices = self.options(doc)
        if self.mode == "strict":
            return strict_answer(str(response), labels)
        return flexible_answer(str(response), labels, choices)

    def apply(self, resps, docs):
        out = []
        for entry, doc in zip(resps, docs, strict=True):
            out.append([self._one(r, doc) for r in entry] if isinstance(entry, list)
                       else self._one(entry, doc))
        return out


def unparsed(references: Sequence[Any], predictions: Sequence[Any]) -> float:
    """1.0 when no answer could be read from the response (its filtered value is INVALID)."""
    return 1.0 if predictions[0] == INVALID else 0.0
