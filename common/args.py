"""Parsing of lm_eval-style ``key=value`` argument strings (model_args, gen_kwargs, metadata)."""

from __future__ import annotations

import ast
import json
from typing import Any

from evalfleet.common.errors import InvalidArgumentError


def _coerce(value: str) -> Any:
    """Turn a string value into bool/int/float/None/list when it reads as one, as lm-eval does."""
    lowered = value.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def parse_kv_args(text: str | None, *, field: str) -> dict[str, Any]:
    """Parse ``"k=v,k2=v2"`` (or ``"k=v k2=v2"``) or a JSON object into a dict.

    ``field`` names the spec field in error messages, e.g. ``spec.model_args``.
    """
    if text is None:
        return {}
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"{field}: not valid JSON ({exc.msg} at {exc.pos})") from exc
        if not isinstance(parsed, dict):
            raise InvalidArgumentError(f"{field}: expected a JSON object")
        return parsed
    result: dict[str, Any] = {}
    pieces = [p for chunk in text.split(",") for p in chunk.split(" ")]
    for piece in pieces:
        if not piece:
            continue
        key, sep, value = piece.partition("=")
        if not sep or not key.strip():
            raise InvalidArgumentError(
                f"{field}: '{piece}' is not key=value (write e.g. pretrained=models/smollm2-135m)"
            )
        result[key.strip()] = _coerce(value.strip())
    return result


def format_kv_args(args: dict[str, Any]) -> str:
    """The inverse of :func:`parse_kv_args` for simple values."""
    return ",".join(f"{k}={v}" for k, v in args.items())
