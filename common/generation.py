"""Generation settings of a ``generate_until`` request, normalised as lm-eval does.

Shared by the coordinator (which normalises each task's ``generation_kwargs`` into the wire
form) and the workers (which generate with them), so neither imports the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.logging import get_logger

log = get_logger("generation")

DEFAULT_MAX_GEN_TOKS = 256
#: The wire's bounds (``GenerationParams.max_gen_toks``/``top_k`` are int32, ``seed`` int64).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# lm-eval's normalize_gen_kwargs: token-limit aliases, highest priority first.
_MAX_TOKEN_ALIASES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def _bad(name: str, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{name}: {message}")


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _bad(name, f"expected an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad(name, f"expected an integer, got {value!r}") from None


def _as_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad(name, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise _bad(name, f"expected a finite number, got {value!r}")
    return number


def _in_range(name: str, value: Any, low: float, high: float, what: str) -> Any:
    """``value`` when ``low <= value <= high``; else INVALID_ARGUMENT saying ``what``."""
    if not low <= value <= high:
        raise _bad(name, f"{what}, got {value!r}")
    return value


@dataclass(frozen=True)
class GenerationParams:
    """Normalised generation settings of one ``generate_until`` request."""

    until: list[str] = field(default_factory=list)
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS
    temperature: float = 0.0
    do_sample: bool = False
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    def key(self) -> tuple:
        """A hashable key: requests with equal keys may share a generation batch."""
        return (tuple(self.until), self.max_gen_toks, self.temperature, self.do_sample,
                self.top_p, self.top_k, self.seed)

    @classmethod
    def from_gen_kwargs(cls, gen_kwargs: Mapping[str, Any] | None,
                        default_max_gen_toks: int = DEFAULT_MAX_GEN_TOKS) -> GenerationParams:
        """Apply lm-eval's ``normalize_gen_kwargs`` rules to a task's generation_kwargs.

        Errors name the key as ``gen_kwargs.<key>``.
        """
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif isinstance(until, (list, tuple)) and all(isinstance(u, str) for u in until):
            until = list(until)
        else:
            raise _bad("gen_kwargs.until", f"expected str or list[str], got {until!r}")
        limits = [(k, kwargs.pop(k)) for k in _MAX_TOKEN_ALIASES if kwargs.get(k) is not None]
        for k in _MAX_TOKEN_ALIASES:
            kwargs.pop(k, None)
        if limits:
            name = f"gen_kwargs.{limits[0][0]}"
            max_gen_toks = _in_range(name, _as_int(name, limits[0][1]), 1, INT32_MAX,
                                     f"must be a whole number from 1 to {INT32_MAX}")
        else:
            max_gen_toks = default_max_gen_toks
        temperature = _in_range(
            "gen_kwargs.temperature",
            _as_float("gen_kwargs.temperature", kwargs.pop("temperature", 0.0) or 0.0),
            0.0, math.inf, "must be >= 0 (0 decodes greedily)")
        do_sample = kwargs.pop("do_sample", None)
        if do_sample is None:
            do_sample = temperature > 0.0
        elif not isinstance(do_sample, bool):
            raise _bad("gen_kwargs.do_sample", f"expected a bool, got {do_sample!r}")
        if not do_sample:
            temperature = 0.0
        top_p = kwargs.pop("top_p", None)
        top_k = kwargs.pop("top_k", None)
        seed = kwargs.pop("seed", None)
        kwargs.pop("max_length", None)  # lm-eval honours it with a warning; we use max_gen_toks
        if kwargs:
            log.warning("gen_kwargs_ignored", keys=sorted(kwargs))
        if top_p is not None:
            top_p = _as_float("gen_kwargs.top_p", top_p)
            if not 0.0 < top_p <= 1.0:
                raise _bad("gen_kwargs.top_p", f"must be in (0, 1], got {top_p!r}")
        if top_k is not None:
            top_k = _in_range("gen_kwargs.top_k", _as_int("gen_kwargs.top_k", top_k), -1,
                              INT32_MAX, "must be >= 0 (or -1 for no limit)")
        if seed is not None:
            seed = _in_range("gen_kwargs.seed", _as_int("gen_kwargs.seed", seed), -INT64_MAX,
                             INT64_MAX, "must fit in 64 bits")
        return cls(until=until, max_gen_toks=max_gen_toks, temperature=temperature,
                   do_sample=do_sample, top_p=top_p, top_k=top_k, seed=seed)
