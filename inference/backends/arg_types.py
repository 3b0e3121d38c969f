"""Typed reading of lm_eval-style model_args for the remote and vLLM backends.

Values arrive as Python values or as strings from ``key=value`` text (``"true"``, ``"8"``);
each reader accepts both and raises :class:`BackendArgumentError` naming the field.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Iterable
from typing import Any

from evalfleet.inference.backends.base import BackendArgumentError

_NONE = ("none", "null")


def is_none(v: Any) -> bool:
    """True for None and the strings "none"/"null"."""
    return v is None or (isinstance(v, str) and v.lower() in _NONE)


def as_bool(name: str, v: Any) -> bool:
    """A boolean from a bool, 0/1 or true/false/yes/no text."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.lower() in ("true", "1", "yes")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise BackendArgumentError(name, f"expected true or false, got {v!r}")


def as_int(name: str, v: Any, minimum: int | None = None) -> int:
    """An integer (integral floats and digit strings accepted), at least ``minimum``."""
    out: int | None = None
    if not isinstance(v, bool) and isinstance(v, (int, float, str)):
        try:
            out = int(v) if not isinstance(v, float) or v.is_integer() else None
        except ValueError:
            out = None
    if out is None:
        raise BackendArgumentError(name, f"expected an integer, got {v!r}")
    if minimum is not None and out < minimum:
        raise BackendArgumentError(name, f"must be >= {minimum}, got {out}")
    return out


def as_float(name: str, v: Any, minimum: float | None = None,
             maximum: float | None = None) -> float:
    """A number within [minimum, maximum]."""
    if isinstance(v, bool):
        raise BackendArgumentError(name, f"expected a number, got {v!r}")
    try:
        out = float(v)
    except (TypeError, ValueError):
        raise BackendArgumentError(name, f"expected a number, got {v!r}") from None
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None \
            else f">= {minimum}"
        raise BackendArgumentError(name, f"must be {bounds}, got {out}")
    return out


def as_str(name: str, v: Any) -> str:
    """A non-empty string."""
    if not isinstance(v, str) or not v:
        raise BackendArgumentError(name, f"expected a non-empty string, got {v!r}")
    return v


def opt(reader, name: str, v: Any, *args: Any) -> Any:
    """``reader(name, v, *args)``, or None for a missing/none value."""
    return None if is_none(v) else reader(name, v, *args)


def as_choice(name: str, v: Any, choices: Iterable[str]) -> str:
    """One of ``choices``."""
    options = list(choices)
    if not isinstance(v, str) or v not in options:
        raise BackendArgumentError(name, f"expected one of {', '.join(options)}, got {v!r}")
    return v


def as_dict(name: str, v: Any) -> dict[str, Any]:
    """A mapping, or a JSON object in text."""
    if isinstance(v, str):
        with contextlib.suppress(json.JSONDecodeError):
            v = json.loads(v)
    if not isinstance(v, dict):
        raise BackendArgumentError(name, f"expected a JSON object, got {v!r}")
    return v


def reject_unknown(backend: str, args: dict[str, Any], known: Iterable[str], *,
                   also: Iterable[str] = (), also_named: str = "") -> None:
    """BackendArgumentError for the first key of ``args`` that ``known`` lacks, with close
    matches (e.g. ``max_tokens`` -> ``max_gen_toks``). ``also``: more accepted names, matched
    but not listed in the message (``also_named`` says what they are)."""
    known_list = sorted(set(known))
    accepted = set(known_list) | set(also)
    for key in args:
        if key in accepted:
            continue
        close = difflib.get_close_matches(key, sorted(accepted), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        more = f", and {also_named}" if also_named else ""
        raise BackendArgumentError(
            key, f"not an argument of the {backend} backend{hint} "
                 f"(accepted: {', '.join(known_list)}{more})")
