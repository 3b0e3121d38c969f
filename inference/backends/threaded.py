"""Running a blocking model one batch at a time beside an asyncio worker.

A local model (transformers, vLLM's offline engine) computes one batch at a time. Each batch is
*prepared* (tokenized, sorted, planned) in a thread outside the compute lock, so the next batch
is ready while the current one runs, and then *computed* in a thread under the lock. A caller
that goes away while its batch waits for the lock (deadline passed, call cancelled) is dropped
there, unseen by the model; a batch already computing runs to its end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

P = TypeVar("P")
R = TypeVar("R")


class OneAtATime:
    """Prepare batches concurrently, compute them one at a time, in a worker thread."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def run(self, prepare: Callable[[], P], compute: Callable[[P], R]) -> tuple[R, float]:
        """``compute(prepare())``; returns the result and the seconds spent computing."""
        prepared = await asyncio.to_thread(prepare)
        async with self._lock:
            started = time.perf_counter()
            result = await asyncio.to_thread(compute, prepared)
            return result, time.perf_counter() - started
