"""One job's dispatch: its requests without stored answers, as the scheduler hands them out,
and how batches are sized, timed and retried (:class:`SchedulerConfig`).

The dispatch state of a job is only (its plan, the answers stored): every dispatch starts from
the requests without a stored answer, so a job can be resumed by any coordinator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from evalfleet.server.batching import KindQueue, kind_queues
from evalfleet.server.store.base import AnswerSlices
from evalfleet.server.worker_record import Worker
from evalfleet.server.workers import WorkItem
from evalfleet.v1 import inference_pb2 as ipb


@dataclass
class SchedulerConfig:
    """How batches are sized, timed and retried."""

    batch_seconds: float = 2.0
    max_batch_items: int = 512
    max_batch_bytes: int = 8 * 1024 * 1024
    initial_batch_items: int = 16
    growth: float = 32.0
    stretch: int = 4
    max_attempts: int = 3
    min_deadline_s: float = 30.0
    first_deadline_s: float = 600.0
    deadline_factor: float = 5.0
    no_worker_timeout_s: float = 600.0


#: Called with a batch's answers: (kind queue, indices answered (an int64 array), the answers
#: as spans of the response, worker, cost). It stores them; the batch's requests count as done
#: when it returns.
AnswerSink = Callable[[KindQueue, np.ndarray, AnswerSlices, str, ipb.BatchCost],
                      Awaitable[None]]


@dataclass
class JobDispatch:
    """One job's requests without stored answers, as the scheduler hands them out."""

    job_id: str
    model_key: tuple[str, str]
    queues: list[KindQueue]
    on_answers: AnswerSink
    allowed: set[str] | None = None  # spec.worker_addresses, when the job names its workers
    describe: Callable[[str], str] = str  # request id -> "task X doc N (...)"
    notify: Callable[[str], None] = lambda message: None  # an event for the job's watchers
    config: SchedulerConfig | None = None
    sealed: bool = True  # every request has been added (see add / seal)
    served_s: float = 0.0
    in_flight: int = 0
    in_flight_items: int = 0
    batches_sent: int = 0
    remaining: int = 0
    #: requests whose answer was already stored when they were added (counted by the caller)
    from_store: int = 0
    #: requests answered by workers and stored by this dispatch
    answered: int = 0
    stopped: bool = False
    no_worker_since: float | None = None
    failures: dict[str, list[str]] = field(default_factory=dict)  # request id -> reasons
    #: (id of its queue, index) -> the workers a request failed on: its retries go elsewhere
    failed_on: dict[tuple[int, int], set[str]] = field(default_factory=dict)
    finished: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                     .create_future())

    @classmethod
    def build(cls, job_id: str, model_key: tuple[str, str], items: Sequence[WorkItem],
              on_answers: AnswerSink, *, config: SchedulerConfig,
              allowed: set[str] | None = None, describe: Callable[[str], str] = str,
              notify: Callable[[str], None] | None = None, sealed: bool = True
              ) -> JobDispatch:
        """A dispatch of ``items``; with ``sealed=False`` more are added with :meth:`add`
        while it runs, and it finishes only after :meth:`seal`."""
        dispatch = cls(job_id, model_key, [], on_answers, allowed, describe, config=config,
                       sealed=False)
        if notify is not None:
            dispatch.notify = notify
        dispatch.add(items)
        dispatch.sealed = sealed
        return dispatch

    def add(self, items: Sequence[WorkItem]) -> list[KindQueue]:
        """Add requests (after those already added); returns their new queues."""
        cfg = self.config or SchedulerConfig()
        queues = kind_queues(items, max_bytes=cfg.max_batch_bytes, stretch=cfg.stretch)
        self.queues.extend(queues)
        self.remaining += len(items)
        return queues

    def seal(self) -> None:
        """Every request has been added: the dispatch finishes when they are answered."""
        self.sealed = True
        if self.remaining <= 0 and not self.stopped:
            self.finish()

    @property
    def pending(self) -> int:
        return sum(q.pending for q in self.queues)

    @property
    def stored(self) -> int:
        """Requests of the job with a stored answer: from the store, or answered since."""
        return self.from_store + self.answered

    def eligible(self, worker: Worker) -> bool:
        return (not self.stopped and worker.model_key == self.model_key
                and (self.allowed is None or worker.address in self.allowed))

    def finish(self, error: BaseException | None = None) -> None:
        """The dispatch ended: every request answered (``error`` None) or the job failed."""
        if not self.finished.done():
            if error is None:
                self.finished.set_result(None)
            else:
                self.finished.set_exception(error)
