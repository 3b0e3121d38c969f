"""The Worker record: one worker as the registry sees it (state, model, slots, counts)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from evalfleet.common.rpc import CHANNEL_OPTIONS
from evalfleet.server.workers import WorkerClient
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

CONNECTING = cpb.WORKER_STATE_CONNECTING
READY = cpb.WORKER_STATE_READY
DOWN = cpb.WORKER_STATE_DOWN
DRAINING = cpb.WORKER_STATE_DRAINING
#: Channels to workers reconnect within seconds of a worker coming back (gRPC's default
#: back-off grows to two minutes while a worker is down, e.g. loading its model).
WORKER_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
#: Seconds of answers a worker's throughput figure covers.
THROUGHPUT_WINDOW_S = 30.0


@dataclass
class Worker:
    """One worker as the registry sees it."""

    address: str
    source: str
    client: WorkerClient
    state: int = CONNECTING
    info: ipb.ModelInfo | None = None
    state_since: float = field(default_factory=time.time)
    last_error: str = ""
    last_error_at: float | None = None  # wall clock of last_error
    in_flight: int = 0
    jobs_in_flight: dict[str, int] = field(default_factory=dict)
    requests_answered: int = 0
    api_concurrency: int = 0  # remote backends: the limiter's level in its last batch
    throttled_responses: int = 0  # remote backends: 429/503/timeouts, summed over batches
    batches_done: int = 0
    batches_failed: int = 0
    consecutive_failures: int = 0
    retry_at: float = 0.0  # monotonic: not checked again before this after a failure
    lease_until: float | None = None  # wall clock, registered workers
    refs: int = 0  # jobs naming it in spec.worker_addresses (source "spec")
    recent: deque[tuple[float, int]] = field(default_factory=deque)
    monitor: asyncio.Task | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def model_key(self) -> tuple[str, str] | None:
        """(backend, fingerprint) of its model; None before it answered."""
        return (self.info.backend, self.info.fingerprint) if self.info is not None else None

    @property
    def max_in_flight(self) -> int:
        """Batches kept in flight: what it computes at once, plus one queued behind."""
        concurrent = self.info.capabilities.max_concurrent_batches if self.info else 1
        limit = max(1, concurrent) + 1
        # After a failure, one batch at a time until a batch succeeds again.
        return 1 if self.consecutive_failures else limit

    @property
    def free_slots(self) -> int:
        return self.max_in_flight - self.in_flight if self.state == READY else 0

    def throughput(self, now: float | None = None) -> float:
        """Requests answered per second over the last ``THROUGHPUT_WINDOW_S``."""
        now = time.monotonic() if now is None else now
        while self.recent and self.recent[0][0] < now - THROUGHPUT_WINDOW_S:
            self.recent.popleft()
        if not self.recent:
            return 0.0
        span = max(now - self.recent[0][0], 1.0)
        return sum(n for _, n in self.recent) / span

    def to_proto(self) -> cpb.WorkerStatus:
        status = cpb.WorkerStatus(
            address=self.address, source=self.source, state=self.state,
            in_flight_batches=self.in_flight, max_in_flight_batches=self.max_in_flight,
            requests_per_second=round(self.throughput(), 3),
            requests_answered=self.requests_answered, batches_done=self.batches_done,
            batches_failed=self.batches_failed, last_error=self.last_error,
            api_concurrency=self.api_concurrency, throttled_responses=self.throttled_responses,
            evaluations=sorted(j for j, n in self.jobs_in_flight.items() if n > 0))
        status.state_since.FromNanoseconds(int(self.state_since * 1e9))
        if self.last_error_at is not None:
            status.last_error_at.FromNanoseconds(int(self.last_error_at * 1e9))
        if self.info is not None:
            status.backend = self.info.backend
            status.model_name = self.info.model_name
            status.fingerprint = self.info.fingerprint
        if self.lease_until is not None:
            status.lease_expires_at.FromNanoseconds(int(self.lease_until * 1e9))
        return status



def describe_worker(worker: Worker) -> str:
    """'address (STATE, backend model fingerprint…)' for error messages."""
    state = cpb.WorkerState.Name(worker.state).removeprefix("WORKER_STATE_")
    parts = [state]
    if worker.info is not None:
        parts.append(f"{worker.info.backend} {worker.info.model_name} "
                     f"{worker.info.fingerprint[:19]}")
    if worker.last_error and worker.state != READY:
        parts.append(worker.last_error)
    return f"{worker.address} ({', '.join(parts)})"
