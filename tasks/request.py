"""The model request type produced by tasks (the equivalent of lm-eval's Instance)."""

from __future__ import annotations

from dataclasses import dataclass

from evalfleet.common.request_kind import RequestKind

REQUEST_TYPES = tuple(RequestKind)


@dataclass(frozen=True)
class Request:
    """One model request for one doc of one task.

    ``arguments`` is ``(context, continuation)`` for loglikelihood, ``(text,)`` for
    loglikelihood_rolling and ``(context, gen_kwargs)`` for generate_until.
    """

    task_name: str
    doc_id: int
    idx: int
    request_type: RequestKind
    arguments: tuple
    repeats: int = 1
