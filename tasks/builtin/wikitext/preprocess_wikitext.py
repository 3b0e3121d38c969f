"""WikiText detokenization and word/byte counting (lm-eval's wikitext v2 behaviour)."""

from __future__ import annotations

import re
from typing import Any

# Ordered rewrite rules: ("s", old, new) is a plain replace, ("re", pattern, repl) a re.sub.
_RULES: list[tuple[str, str, str]] = [
    ("s", "s '", "s'"),
    ("re", r"/' [0-9]/", r"/'[0-9]/"),
    ("s", " @-@ ", "-"),
    ("s", " @,@ ", ","),
    ("s", " @.@ ", "."),
    *[("s", f" {p} ", f"{p} ") for p in (":", ";", ".", "!", "?", ",")],
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"),
    ("re", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("s", "= = = =", "===="),
    ("s", "= = =", "==="),
    ("s", "= =", "=="),
    ("s", " \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    ("s", " \n", "\n"),
    ("s", "\n ", "\n"),
    ("s", " N ", " 1 "),
    ("s", " 's", "'s"),
]


def wikitext_detokenizer(doc: dict[str, Any]) -> str:
    """Undo WikiText tokenization artifacts in ``doc['page']``."""
    text = doc["page"]
    for kind, old, new in _RULES:
        text = re.sub(old, new, text) if kind == "re" else text.replace(old, new)
    return text


def process_results(doc: dict[str, Any], results: tuple[float]) -> dict[str, tuple]:
    """Rolling-loglikelihood metrics; words and bytes are counted on the ORIGINAL page."""
    (loglikelihood,) = results
    page = doc["page"]
    words = len(re.split(r"\s+", page))
    nbytes = len(page.encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, nbytes),
        "bits_per_byte": (loglikelihood, nbytes),
    }
