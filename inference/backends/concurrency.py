"""Adaptive concurrency for the remote API backends: how many HTTP calls are in flight.

``num_concurrent`` is a ceiling. The :class:`Limiter` starts at a few calls and adapts:

* **Slow start**: each clean answer adds one call (the limit doubles per round trip) until the
  first throttle, so a fast, unlimited server reaches the ceiling within a few round trips.
* **Additive increase** afterwards: one call more per round trip's worth of clean answers
  (``1 / limit`` per answer), and four times slower near the level that was last throttled
  (CUBIC's plateau): the limit lingers just below the server's limit instead of hitting it
  every other round trip, which is what keeps throughput near the server's own.
* **Multiplicative decrease** on a throttle (429, 529, 503) or a timeout: the limit times 0.7,
  at most once per round trip (an answer to a call sent before the last cut does not cut again,
  as TCP counts one loss per window).

Latency-gradient control (Vegas, Netflix's ``gradient2``) was not chosen: a hosted API's latency
varies with the length of each answer far more than with its queue, so it is a poor signal of
the rate limit, which the server states plainly with a 429.

One limiter per API root and event loop (a worker process has one loop) is shared by every
backend and job of the process (:func:`shared_limiter`), so several jobs against one
rate-limited endpoint share its limit instead of each probing it. Waiting calls are granted
round robin over flows (each batch is a flow), so neither of two jobs starves the other.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

#: The limit a new adaptive limiter starts at (capped by the ceiling).
INITIAL_LIMIT = 4
#: Multiplicative decrease on a throttle.
DECREASE = 0.7
#: Additive increase is this many times slower within one call of the last throttled level.
PLATEAU_SLOWDOWN = 4.0


@dataclass(frozen=True)
class Ticket:
    """A granted call: the cut epoch it was sent in."""

    epoch: int


class Limiter:
    """Bounds calls in flight at ``limit`` (adaptive between 1 and ``ceiling``, or fixed at
    ``ceiling`` with ``adaptive=False``); waiters are served round robin over flows."""

    def __init__(self, ceiling: int, *, adaptive: bool = True) -> None:
        self.ceiling = max(1, ceiling)
        self.adaptive = adaptive
        self.limit = float(min(self.ceiling, INITIAL_LIMIT) if adaptive else self.ceiling)
        self.slow_start_until = float(self.ceiling)
        self.last_throttled_at: float | None = None
        self.in_flight = 0
        self.epoch = 0
        self.successes = 0
        self.throttles = 0
        self.peak_in_flight = 0
        self._flows: dict[Hashable, deque[asyncio.Future[Ticket]]] = {}

    @property
    def current(self) -> int:
        """Calls allowed in flight now."""
        return max(1, int(self.limit))

    def raise_ceiling(self, ceiling: int) -> None:
        """Another backend of the process shares this endpoint with a higher num_concurrent."""
        if ceiling > self.ceiling:
            self.ceiling = ceiling
            self.slow_start_until = max(self.slow_start_until, float(ceiling))
            if not self.adaptive:
                self.limit = float(ceiling)
            self._wake()

    async def acquire(self, flow: Hashable = None) -> Ticket:
        """Wait for a slot (round robin over ``flow`` keys among waiters)."""
        if self.in_flight < self.current and not self._flows:
            return self._grant()
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._flows.setdefault(flow, deque()).append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result(), ok=False)  # granted as it was cancelled
            else:
                self._drop(flow, future)
            raise

    def release(self, ticket: Ticket, *, ok: bool = False, throttled: bool = False) -> None:
        """The call ended: ``ok`` (a clean answer), ``throttled`` (429/503/timeout) or
        neither (another error: the limit stays)."""
        self.in_flight -= 1
        if ok:
            self.successes += 1
            self._increase()
        elif throttled:
            self.throttles += 1
            if self.adaptive and ticket.epoch == self.epoch:
                self.last_throttled_at = self.limit
                self.limit = max(1.0, self.limit * DECREASE)
                self.slow_start_until = self.limit
                self.epoch += 1
        self._wake()

    def _increase(self) -> None:
        if not self.adaptive or self.limit >= self.ceiling:
            return
        if self.limit < self.slow_start_until:
            step = 1.0
        else:
            step = 1.0 / self.limit
            if self.last_throttled_at is not None and self.limit >= self.last_throttled_at - 1:
                step /= PLATEAU_SLOWDOWN
        self.limit = min(float(self.ceiling), self.limit + step)

    def _grant(self) -> Ticket:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return Ticket(self.epoch)

    def _wake(self) -> None:
        while self._flows and self.in_flight < self.current:
            flow = next(iter(self._flows))
            queue = self._flows.pop(flow)
            future = queue.popleft()
            if queue:
                self._flows[flow] = queue  # to the back of the round
            if not future.done():
                future.set_result(self._grant())

    def _drop(self, flow: Hashable, future: asyncio.Future[Ticket]) -> None:
        queue = self._flows.get(flow)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._flows[flow]


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Limiter]] = \
    weakref.WeakKeyDictionary()


def shared_limiter(api_root: str, ceiling: int) -> Limiter:
    """The adaptive limiter of ``api_root`` in this event loop (created at ``ceiling``; a
    later backend with a higher ``num_concurrent`` raises it)."""
    limiters = _SHARED.setdefault(asyncio.get_running_loop(), {})
    key = api_root.rstrip("/")
    limiter = limiters.get(key)
    if limiter is None:
        limiter = limiters[key] = Limiter(ceiling)
    else:
        limiter.raise_ceiling(ceiling)
    return limiter
