"""What a task's generations were like: how many responses hit the length limit, how many ended
inside their thinking (scored as no answer), and the tokens they used.

The results document carries them in its own section, beside lm-eval's (whose schema is kept)::

    "evalfleet_generation": {
      "tasks": {"gsm8k": {"responses": 10, "hit_length_limit": 3, "unfinished_thinking": 2,
                          "usage": {"prompt_tokens": 812, "completion_tokens": 2560,
                                    "reasoning_tokens": 2201}}},
      "total": {... the same keys summed over the job's tasks ...}
    }

Only tasks with generations appear; the section is absent when the job has none. Usage is as
the API reports it (``usage``; reasoning tokens from ``completion_tokens_details``), counted by
the tokenizer on hf and vllm, 0 where unknown. It describes the responses scored, answers from
the answer store included; what the job itself spent (every request kind, cached input tokens,
cost) is the ``evalfleet_usage`` section (:mod:`evalfleet.server.usage`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from evalfleet.v1 import inference_pb2 as pb

#: The results document's section name.
SECTION = "evalfleet_generation"
_USAGE = ("prompt_tokens", "completion_tokens", "reasoning_tokens")


@dataclass
class GenerationStats:
    """Counts over a task's generated responses (one per repeat)."""

    responses: int = 0
    hit_length_limit: int = 0
    unfinished_thinking: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, generation: pb.Generation) -> None:
        """Count one response."""
        self.responses += 1
        self.hit_length_limit += int(generation.hit_length_limit)
        self.unfinished_thinking += int(generation.unfinished_thinking)
        for name in _USAGE:
            setattr(self, name, getattr(self, name) + getattr(generation, name))

    def merge(self, other: GenerationStats) -> None:
        """Add ``other``'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, Any]:
        """The section's form of these counts."""
        return {"responses": self.responses, "hit_length_limit": self.hit_length_limit,
                "unfinished_thinking": self.unfinished_thinking,
                "usage": {name: getattr(self, name) for name in _USAGE}}


def generation_section(per_task: Iterable[tuple[str, GenerationStats | None]]
                       ) -> dict[str, Any] | None:
    """The ``evalfleet_generation`` section of ``(task name, stats)`` pairs; None when no task
    generated anything."""
    tasks: dict[str, Any] = {}
    total = GenerationStats()
    for name, stats in per_task:
        if stats is not None and stats.responses:
            tasks[name] = stats.as_dict()
            total.merge(stats)
    return {"tasks": tasks, "total": total.as_dict()} if tasks else None
