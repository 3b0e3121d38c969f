"""Reasoning models: a generation's thinking kept apart from its answer, on every backend.

lm-eval 0.4.13 keeps the text after the last ``think_end_token`` (``postprocess_generated_text``)
and, when the token never came, the whole generation, so an answer cut by ``max_gen_toks``
inside its thinking is parsed out of the thinking (lm-eval #3382). Here a generation that ended
inside its thinking is no answer: its text is empty and the whole generation is its
``reasoning``. The thinking is open at the end when ``think_end_token`` is set and absent from
the generation, or when the server returned its reasoning separately (``reasoning_content``)
and no answer.

A backend answers each generation with a :class:`GeneratedText`: the answer (a ``str``, as
before) carrying the reasoning, whether it hit the length limit, and its token usage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class GeneratedText(str):
    """An answer (the ``str`` value) with what the worker knows about its generation."""

    reasoning: str
    hit_length_limit: bool
    unfinished_thinking: bool
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int

    def __new__(cls, text: str, *, reasoning: str = "", hit_length_limit: bool = False,
                unfinished_thinking: bool = False, prompt_tokens: int = 0,
                completion_tokens: int = 0, reasoning_tokens: int = 0,
                cached_tokens: int = 0) -> GeneratedText:
        out = super().__new__(cls, text)
        out.reasoning = reasoning
        out.hit_length_limit = hit_length_limit
        out.unfinished_thinking = unfinished_thinking
        out.prompt_tokens = prompt_tokens
        out.completion_tokens = completion_tokens
        out.reasoning_tokens = reasoning_tokens
        out.cached_tokens = cached_tokens
        return out

    def generation_fields(self) -> dict[str, Any]:
        """The ``Generation`` message's fields beside ``text`` (set ones only)."""
        fields = {"reasoning": self.reasoning, "hit_length_limit": self.hit_length_limit,
                  "unfinished_thinking": self.unfinished_thinking,
                  "prompt_tokens": self.prompt_tokens,
                  "completion_tokens": self.completion_tokens,
                  "reasoning_tokens": self.reasoning_tokens,
                  "cached_tokens": self.cached_tokens}
        return {k: v for k, v in fields.items() if v}


def generation_fields(outcome: str) -> dict[str, Any]:
    """The ``Generation`` fields of a backend's answer beyond its text (none for a plain str)."""
    return outcome.generation_fields() if isinstance(outcome, GeneratedText) else {}


def split_thinking(generation: str, think_end_token: str | None, *,
                   separate_reasoning: str | None = None) -> tuple[str, str, bool]:
    """``(answer, reasoning, unfinished_thinking)`` of a raw generation.

    With ``think_end_token`` the answer is the text after its last occurrence, left-stripped
    (lm-eval's rule) and the reasoning the text before it; without the token in the generation
    (and no separate reasoning) the thinking never ended: no answer, all of it reasoning.
    ``separate_reasoning`` is the server's own reasoning field: it is prepended to the
    reasoning, and a response with reasoning and an empty answer ended inside its thinking.
    """
    answer, reasoning, unfinished = generation, "", False
    if think_end_token:
        head, sep, tail = generation.rpartition(think_end_token)
        if sep:
            answer, reasoning = tail.lstrip(), head
        elif not separate_reasoning:  # a server that parses thinking sends only the answer
            answer, reasoning, unfinished = "", generation, True
    if separate_reasoning:
        reasoning = separate_reasoning + (("\n" + reasoning) if reasoning else "")
        if not answer.strip():
            unfinished = True
    return answer, reasoning, unfinished


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text before the first occurrence of each stop sequence in turn (lm-eval's rule)."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


def api_usage(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """``prompt_tokens``, ``completion_tokens`` and ``reasoning_tokens`` of an OpenAI-style or
    Anthropic ``usage`` object, as the API reports them."""
    usage = usage or {}
    details = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    return {
        "prompt_tokens": int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens")
                                 or usage.get("output_tokens") or 0),
        "reasoning_tokens": int(details.get("reasoning_tokens") or 0),
    }


def api_generation(content: str | None, think_end_token: str | None, *,
                   separate_reasoning: str | None, finish_reason: str | None,
                   usage: Mapping[str, Any] | None, stops: Sequence[str] = (),
                   none_answer: str = "") -> GeneratedText:
    """The answer of one API response: thinking split off, then stop sequences applied to the
    answer; ``finish_reason`` "length" (or Anthropic's "max_tokens") is the length limit."""
    hit = finish_reason in ("length", "max_tokens")
    if content is None and not separate_reasoning:
        return GeneratedText(none_answer, hit_length_limit=hit, **api_usage(usage))
    answer, reasoning, unfinished = split_thinking(content or "", think_end_token,
                                                   separate_reasoning=separate_reasoning)
    if content is None and not unfinished:
        answer = none_answer
    return GeneratedText(cut_at_stops(answer, stops), reasoning=reasoning,
                         hit_length_limit=hit, unfinished_thinking=unfinished,
                         **api_usage(usage))


def local_generation(text: str, *, until: Sequence[str], think_end_token: str | None,
                     hit_length_limit: bool, prompt_tokens: int, completion_tokens: int,
                     count_tokens: Callable[[str], int]) -> GeneratedText:
    """The answer of a generation computed here (hf, vllm): lm-eval's
    ``postprocess_generated_text`` (thinking first, then stop sequences on the answer), the
    thinking kept as reasoning and its tokens counted with ``count_tokens``."""
    answer, reasoning, unfinished = split_thinking(text, think_end_token)
    if unfinished:
        reasoning_tokens = completion_tokens
    elif think_end_token:
        reasoning_tokens = count_tokens(reasoning + think_end_token)
    else:
        reasoning_tokens = 0
    return GeneratedText(cut_at_stops(answer, until), reasoning=reasoning,
                         hit_length_limit=hit_length_limit, unfinished_thinking=unfinished,
                         prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         reasoning_tokens=reasoning_tokens)


def reasoning_fingerprint(fingerprint: str, think_end_token: str | int | None,
                          enable_thinking: bool | None = None) -> str:
    """The answer-cache key of a model evaluated with these reasoning settings: unchanged
    without them, else its own (answers split at another token, or generated with thinking
    switched otherwise, are never reused)."""
    if think_end_token is None and enable_thinking is None:
        return fingerprint
    key = json.dumps([fingerprint, think_end_token, enable_thinking])
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
