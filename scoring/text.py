"""``exact_match`` with lm-eval's ``exact_match_hf_evaluate`` normalisation options."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np

_PUNCT = str.maketrans("", "", string.punctuation)
_DIGITS = str.maketrans("", "", string.digits)


def _normalise(
    x: str, regexes: Sequence[re.Pattern[str]], ignore_case: bool, punct: bool, numbers: bool
) -> str:
    for rx in regexes:
        x = rx.sub("", x)
    if ignore_case:
        x = x.lower()
    if punct:
        x = x.translate(_PUNCT)
    if numbers:
        x = x.translate(_DIGITS)
    return x


def exact_match(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    regexes_to_ignore: Sequence[str] | None = None,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
) -> np.ndarray:
    """Per-item 0/1 (float64): prediction equals reference after lm-eval's normalisation.

    Order: delete each regex match (in order), lowercase, drop ``string.punctuation``, drop
    digits. Like NumPy's fixed-width strings, trailing NUL characters are ignored.
    """
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    rx = [re.compile(s) for s in (regexes_to_ignore or ())]
    out = np.empty(len(predictions), dtype=np.float64)
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        a = _normalise(str(p), rx, ignore_case, ignore_punctuation, ignore_numbers)
        b = _normalise(str(r), rx, ignore_case, ignore_punctuation, ignore_numbers)
        out[i] = 1.0 if a.rstrip("\0") == b.rstrip("\0") else 0.0
    return out
