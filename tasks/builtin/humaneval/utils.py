"""HumanEval: pass@k through evalfleet's sandbox, and the prompt + completion programs."""

from __future__ import annotations

from typing import Any

from evalfleet.execution import pass_at_k

__all__ = ["build_predictions", "pass_at_k"]


def build_predictions(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    """Each completion appended to its problem's prompt (the program that is tested)."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs, strict=True)]
