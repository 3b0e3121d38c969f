"""Tokens a remote API reports per call (``usage``), and their share per request.

Every remote backend reads a response's ``usage`` with :func:`add_usage` into the batch's
``Cost``; :func:`attach_usage` then gives each request of the call its share, carried to the
coordinator on the request's answer (``TokenScores`` / ``Generation`` token fields), which sums
them per task and per job.

Fields, the same for every API:

* ``prompt_tokens``: every prompt token billed, cached ones included (OpenAI's
  ``prompt_tokens``; Anthropic's ``input_tokens + cache_read_input_tokens +
  cache_creation_input_tokens``, since its ``input_tokens`` leaves the cache out);
* ``cached_tokens``: the part of them read from the provider's prompt cache (OpenAI's
  ``prompt_tokens_details.cached_tokens``, Anthropic's ``cache_read_input_tokens``);
* ``completion_tokens``: generated tokens, thinking included (``completion_tokens`` /
  ``output_tokens``);
* ``reasoning_tokens``: the part of them spent thinking
  (``completion_tokens_details.reasoning_tokens``).

A call that answers several requests (``batch_size`` > 1 on completions) reports one usage for
all: it is split evenly over them, the remainder going to the first ones, so sums stay exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from evalfleet.inference.backends.base import Cost, TokenScores
from evalfleet.inference.backends.reasoning import GeneratedText

#: The usage fields, in the order of :class:`TokenUsage`.
USAGE_FIELDS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")


@dataclass(frozen=True)
class TokenUsage:
    """Tokens one call (or one request's share of it) used."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in USAGE_FIELDS)

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(*(getattr(self, n) + getattr(other, n) for n in USAGE_FIELDS))

    def __sub__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(*(getattr(self, n) - getattr(other, n) for n in USAGE_FIELDS))

    def split(self, n: int) -> list[TokenUsage]:
        """``n`` shares whose sum is this usage: even, the remainder to the first shares."""
        shares = [divmod(getattr(self, name), n) for name in USAGE_FIELDS]
        return [TokenUsage(*(q + (i < r) for q, r in shares)) for i in range(n)]


def parse_usage(usage: Mapping[str, Any] | None) -> TokenUsage:
    """The :class:`TokenUsage` of an OpenAI-style or Anthropic ``usage`` object."""
    usage = usage or {}

    def number(mapping: Any, key: str) -> int:
        value = mapping.get(key) if isinstance(mapping, Mapping) else None
        return int(value) if isinstance(value, int | float) and value > 0 else 0

    if "input_tokens" in usage and "prompt_tokens" not in usage:  # Anthropic Messages
        cached = number(usage, "cache_read_input_tokens")
        prompt = number(usage, "input_tokens") + cached + number(
            usage, "cache_creation_input_tokens")
        completion = number(usage, "output_tokens")
    else:
        prompt = number(usage, "prompt_tokens")
        cached = number(usage.get("prompt_tokens_details"), "cached_tokens")
        completion = number(usage, "completion_tokens")
    details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    return TokenUsage(prompt, min(cached, prompt) if prompt else cached, completion,
                      number(details, "reasoning_tokens"))


@dataclass
class _CallUsage:
    total: TokenUsage = TokenUsage()


#: The usage of the call the current asyncio task is making (see :func:`with_call_usage`).
_CALL: ContextVar[_CallUsage | None] = ContextVar("evalfleet_call_usage", default=None)


def add_usage(cost: Cost, usage: Mapping[str, Any] | None) -> TokenUsage:
    """Count a response's ``usage`` in ``cost`` (and in the call :func:`with_call_usage`
    measures, if any); the parsed usage."""
    parsed = parse_usage(usage)
    for name in USAGE_FIELDS:
        setattr(cost, name, getattr(cost, name) + getattr(parsed, name))
    call = _CALL.get()
    if call is not None:
        call.total = call.total + parsed
    return parsed


async def with_call_usage(call: Awaitable[list[Any]]) -> list[Any]:
    """The outcomes of one call (``await call``, in its own asyncio task: each task of a
    ``gather`` has its own context), each answer with its share of the usage of every
    response the call read (:func:`add_usage`)."""
    measured = _CallUsage()
    token = _CALL.set(measured)
    try:
        outcomes = await call
    finally:
        _CALL.reset(token)
    return attach_usage(outcomes, measured.total)


def with_usage(outcome: Any, usage: TokenUsage) -> Any:
    """``outcome`` carrying ``usage`` as its request's share (TokenScores and generations;
    errors and anything else unchanged)."""
    if isinstance(outcome, TokenScores):
        return dataclasses.replace(outcome, usage=usage)
    if isinstance(outcome, GeneratedText):
        for name in USAGE_FIELDS:
            setattr(outcome, name, getattr(usage, name))
    return outcome


def attach_usage(outcomes: list[Any], usage: TokenUsage) -> list[Any]:
    """The outcomes of one call, its answers each with a share of the call's ``usage``
    (unchanged when the call reported none, or answered nothing usable)."""
    answered = [i for i, o in enumerate(outcomes) if isinstance(o, TokenScores | GeneratedText)]
    if not usage or not answered:
        return outcomes
    out = list(outcomes)
    for i, share in zip(answered, usage.split(len(answered)), strict=True):
        out[i] = with_usage(out[i], share)
    return out


def scores_usage(parts: list[TokenScores]) -> TokenUsage | None:
    """The summed usage of the windows a rolling request was scored in (None: none known)."""
    known = [p.usage for p in parts if p.usage]
    return sum(known, TokenUsage()) if known else None
