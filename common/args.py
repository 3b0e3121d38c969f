"""Parsing of lm_eval-style ``key=value`` argument strings (model_args, gen_kwargs, metadata)."""

from __future__ import annotations

import ast
import json
from typing import Any

from evalfleet.common.errors import InvalidArgumentError

#: How deep a value given in arguments may nest (lists, dicts); deeper is refused.
MAX_NESTING = 32


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar is 0), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_NESTING and isinstance(item, dict | list | tuple | set):
            stack.extend((x, depth + 1) for x in (item.values() if isinstance(item, dict)
                                                  else item))
    return deepest


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
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
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
        too_deep = InvalidArgumentError(f"{field}: values nest more than {MAX_NESTING} levels "
                                        "deep; give a flat object of settings")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"{field}: not valid JSON ({exc.msg} at {exc.pos})") from exc
        except RecursionError:  # nested deeper than Python's parser goes
            raise too_deep from None
        if _depth(parsed) > MAX_NESTING:
            raise too_deep
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
    if _depth(result) > MAX_NESTING:
        raise InvalidArgumentError(f"{field}: values nest more than {MAX_NESTING} levels deep")
    return result


def format_kv_args(args: dict[str, Any]) -> str:
    """The inverse of :func:`parse_kv_args` for simple values."""
    return ",".join(f"{k}={v}" for k, v in args.items())
