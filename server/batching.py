"""A job's requests of one kind, cut into batches on demand.

The planner orders requests so that those sharing a prompt prefix (the choices of a document,
the documents of a task with a common few-shot block) are adjacent. A batch is cut at the size
the scheduler asks for (sized by the worker's expected time), but not in the middle of such a
group: it grows, up to ``stretch`` times the asked size, until the group ends, so the group
lands on one worker, where its prefix is computed once. Everything is precomputed when the
dispatch starts, so cutting a batch is a few array look-ups and one ``bytes.join``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evalfleet.common.request_kind import RequestKind
from evalfleet.server.wire import ExpectedIds, encode_loglikelihood_many
from evalfleet.server.workers import WorkItem, encode_item


def shares_prefix(a: str, b: str) -> bool:
    """Whether two prompts share at least half of the shorter one."""
    half = (min(len(a), len(b)) + 1) // 2
    return half > 0 and a[:half] == b[:half]


@dataclass
class Batch:
    """Requests of one kind, by index into their :class:`KindQueue`, sent in one RPC."""

    queue: KindQueue
    indices: range | list[int]
    payload: bytes

    def __len__(self) -> int:
        return len(self.indices)

    def index_array(self) -> np.ndarray:
        """The indices as an int64 array."""
        if isinstance(self.indices, range):
            return np.arange(self.indices.start, self.indices.stop, dtype=np.int64)
        return np.asarray(self.indices, dtype=np.int64)

    @property
    def request_type(self) -> RequestKind:
        return self.queue.kind


@dataclass
class KindQueue:
    """The requests of one kind still to be answered, in planned order."""

    kind: RequestKind
    items: list[WorkItem]
    max_bytes: int = 8 * 1024 * 1024
    stretch: int = 4
    encoded: list[bytes] = field(init=False)
    # same_context[i]: encoded[i] leaves its context out (it is item i - 1's), so it is sent
    # as is only right after item i - 1; elsewhere in a batch, whole (see payload).
    same_context: np.ndarray = field(init=False)
    ids: list[str] = field(init=False)
    cursor: int = 0
    retry: deque[list[int]] = field(default_factory=deque)
    attempts: np.ndarray = field(init=False)
    done: np.ndarray = field(init=False)
    expected: ExpectedIds = field(init=False)

    def __post_init__(self) -> None:
        self.ids = [w.request_id for w in self.items]
        arguments = [w.arguments for w in self.items]
        if self.kind == RequestKind.LOGLIKELIHOOD:
            self.encoded, self.same_context = encode_loglikelihood_many(self.ids, arguments)
        else:
            self.encoded = [encode_item(w) for w in self.items]
            self.same_context = np.zeros(len(self.items), dtype=bool)
        self.expected = ExpectedIds(self.ids)
        n = len(self.items)
        self.attempts = np.zeros(n, dtype=np.int16)
        self.done = np.zeros(n, dtype=bool)
        sizes = np.fromiter(map(len, self.encoded), dtype=np.int64, count=n)
        self._cum = np.concatenate(([0], np.cumsum(sizes)))
        # starts[i]: item i begins a new prefix group (a batch may be cut just before it).
        prompts = [a[0] for a in arguments]
        starts = np.ones(n + 1, dtype=bool)
        if n > 1:
            # The choices of one document (same_context) share it whole; the others are
            # compared: shares_prefix, inlined.
            starts[1:n] = False
            compared = np.flatnonzero(~self.same_context[1:]) + 1
            starts[compared] = [
                (h := (min(len(a), len(b)) + 1) // 2) == 0 or a[:h] != b[:h]
                for a, b in zip([prompts[i - 1] for i in compared.tolist()],
                                [prompts[i] for i in compared.tolist()], strict=True)]
        # next_start[i]: the first group start at or after i (n at the end).
        positions = np.flatnonzero(starts)
        self._next_start = positions[np.searchsorted(positions, np.arange(n + 1))]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def pending(self) -> int:
        """Requests not yet handed out (fresh ones and ones waiting for a retry)."""
        return len(self.items) - self.cursor + sum(len(r) for r in self.retry)

    def _cut(self, start: int, size: int) -> int:
        """End of a fresh batch from ``start`` of about ``size`` requests."""
        n = len(self.items)
        cum = self._cum
        end = min(n, start + max(1, size))
        byte_end = int(np.searchsorted(cum, cum[start] + self.max_bytes, side="right")) - 1
        end = max(start + 1, min(end, byte_end))
        if end >= n or self._next_start[end] == end:
            return end
        grown = int(self._next_start[end])
        if (grown - start <= self.stretch * max(1, size)
                and cum[grown] - cum[start] <= self.stretch * self.max_bytes):
            return grown
        return end

    def take(self, size: int, *, same_context: bool = True) -> Batch | None:
        """The next batch of about ``size`` requests: retries first, then fresh ones.

        ``same_context`` False (a worker that does not read it) sends every item whole."""
        if self.retry:
            indices = self.retry.popleft()
            if len(indices) > size:
                self.retry.appendleft(indices[size:])
                indices = indices[:size]
            return Batch(self, indices, self.payload(indices, same_context=same_context))
        if self.cursor >= len(self.items):
            return None
        start = self.cursor
        end = self._cut(start, size)
        self.cursor = end
        if not same_context and self.same_context[start:end].any():
            return Batch(self, range(start, end),
                         self.payload(range(start, end), same_context=False))
        parts = self.encoded[start:end]
        if self.same_context[start]:
            parts[0] = encode_item(self.items[start])
        return Batch(self, range(start, end), b"".join(parts))

    def payload(self, indices: Sequence[int], *, same_context: bool = True) -> bytes:
        """The batch's request message body: ``items`` entries in the order of ``indices``,
        an item leaving its context out only right after its predecessor (and never with
        ``same_context`` False)."""
        shared, encoded = self.same_context, self.encoded
        previous = -2
        parts = []
        for i in indices:
            parts.append(encoded[i] if not shared[i] or (same_context and i == previous + 1)
                         else encode_item(self.items[i]))
            previous = i
        return b"".join(parts)

    def requeue(self, indices: Sequence[int], *, split: bool = False) -> None:
        """Put requests back at the front (in halves with ``split``, to isolate a bad one)."""
        indices = list(indices)
        if split and len(indices) > 1:
            half = len(indices) // 2
            self.retry.appendleft(indices[half:])
            self.retry.appendleft(indices[:half])
        elif indices:
            self.retry.appendleft(indices)


def kind_queues(items: Sequence[WorkItem], *, max_bytes: int = 8 * 1024 * 1024,
                stretch: int = 4) -> list[KindQueue]:
    """One queue per request kind, each keeping the planned order."""
    kinds = {item.request_type for item in items}
    if len(kinds) == 1:
        by_kind = {kinds.pop(): list(items)}
    else:
        by_kind = {}
        for item in items:
            by_kind.setdefault(item.request_type, []).append(item)
    return [KindQueue(RequestKind(kind), kind_items, max_bytes=max_bytes, stretch=stretch)
            for kind, kind_items in by_kind.items()]
