"""Regex extraction filters: regex and multi_choice_regex."""

from __future__ import annotations

import re
import sys
import unicodedata

from evalfleet.tasks.filters.base import Filter


def _pick(match: list, group_select: int, fallback: str) -> str:
    """lm-eval's selection of one findall() result (first non-empty group of a tuple)."""
    value = match[group_select]
    if isinstance(value, tuple):
        groups = [m for m in value if m]
        value = groups[0] if groups else fallback
    return value.strip()


class RegexFilter(Filter):
    """Extract ``findall(resp)[group_select]``; ``fallback`` when there is no match."""

    def __init__(
        self,
        regex_pattern: str = r"#### (\-?[0-9\.\,]+)",
        group_select: int = 0,
        fallback: str = "[invalid]",
    ) -> None:
        self.regex = re.compile(regex_pattern)
        self.group_select = group_select
        self.fallback = fallback

    def extract(self, resp: object) -> str:
        """Extract from one response."""
        text = resp if isinstance(resp, str) else ""
        match = self.regex.findall(text)
        if not match:
            return self.fallback
        return _pick(match, self.group_select, self.fallback)

    def apply(self, resps, docs):
        return [[self.extract(x) for x in r] for r in resps]


_PUNCT = None


def _punct_table() -> dict:
    global _PUNCT
    if _PUNCT is None:
        _PUNCT = dict.fromkeys(
            i for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")
        )
    return _PUNCT


class MultiChoiceRegexFilter(RegexFilter):
    """Letter answers for MC prompts: the regex, then choice text, then ``: X`` fallbacks."""

    def __init__(
        self,
        regex_pattern: str = r"#### (\-?[0-9\.\,]+)",
        group_select: int = 0,
        fallback: str = "[invalid]",
        ignore_case: bool = False,
        ignore_punctuation: bool = False,
        regexes_to_ignore: list[str] | None = None,
    ) -> None:
        super().__init__(regex_pattern, group_select, fallback)
        self.ignore_case = ignore_case
        self.ignore_punctuation = ignore_punctuation
        self.regexes_to_ignore = regexes_to_ignore

    def _find(self, regex: re.Pattern, resp: object, convert: dict[str, str]) -> str:
        text = resp if isinstance(resp, str) else ""
        match = regex.findall(text)
        if not match:
            return match  # type: ignore[return-value]  # empty list, falsy like lm-eval
        value = _pick(match, self.group_select, "")
        if value and value in convert:
            value = convert[value]
        return value  # type: ignore[return-value]

    def _ignores(self, st: str) -> str:
        for pattern in self.regexes_to_ignore or []:
            st = re.sub(pattern, "", st)
        if self.ignore_case:
            st = st.lower()
        if self.ignore_punctuation:
            st = st.translate(_punct_table())
        return st

    def apply(self, resps, docs):
        out = []
        for r, doc in zip(resps, docs, strict=True):
            alternatives, to_alpha, letters, letter_target = [], {}, [], {}
            letter = "A"
            for choice in doc["choices"]:
                m = self._ignores(choice.strip())
                alternatives.append(re.escape(m))
                to_alpha[m] = f"({letter})"
                letters.append(letter)
                letter_target[letter] = f"({letter})"
                letter = chr(ord(letter) + 1)
            choice_re = re.compile("|".join(sorted(alternatives, key=len, reverse=True)))
            letter_re = re.compile(rf":[\s]*({'|'.join(letters)})")
            filtered = []
            for resp in r:
                match = self._find(self.regex, resp, {})
                if not match:
                    match = self._find(choice_re, self._ignores(resp), to_alpha)
                    if not match:
                        match = self._find(letter_re, resp, letter_target)
                filtered.append(match or self.fallback)
            out.append(filtered)
        return out


_TAGGED = re.compile(r"\('([^']*)', '([^']*)'\)")


class POSFilter(Filter):
    """``regex_pos``: the part-of-speech tags of a ``[('token', 'TAG'), ...]`` answer, in
    order; ``fallback`` (``["invalid"]``) when there are none."""

    def __init__(self, regex_pattern: str = r"\['(.*?)'\]", group_select: int = 0,
                 fallback: list | None = None) -> None:
        self.regex = re.compile(regex_pattern)  # accepted (and unused), as lm-eval's
        self.group_select = group_select
        self.fallback = ["invalid"] if fallback is None else fallback

    def tags(self, resp: object) -> list:
        pairs = _TAGGED.findall(resp) if isinstance(resp, str) else resp
        return [pos for _, pos in pairs] or self.fallback

    def apply(self, resps, docs):
        return [[self.tags(x) for x in r] for r in resps]
