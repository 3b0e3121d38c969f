"""One scheduler per coordinator: the batches of every running job, shared over the workers.

- **Fair.** When a worker has a free slot, the job that has received the least worker time so
  far (among the jobs on that worker's model) gets it; a job that arrives late starts level
  with the least-served running job. A small job is never stuck behind a large one.
- **Busy workers.** Each READY worker keeps ``max_concurrent_batches + 1`` batches in flight
  (one waiting behind the ones it computes).
- **Batches sized by time.** A batch holds about ``batch_seconds`` of the worker's expected time
  (its measured seconds per request, per job and kind), at most ``max_batch_items`` requests, so
  answers reach the store every few seconds of worker time whatever the batch size in requests.
  A worker's first batch of a job's kind is small (``initial_batch_items``) and alone in flight
  until it returns (its speed is then known); sizes grow at most ``growth`` times per batch.
  Near the end of a job, batches shrink so that the remaining work spreads over the workers.
  Prefix groups are kept whole (see :mod:`batching`).
- **Failures.** A batch whose worker dies, disconnects or passes its deadline (``deadline_factor``
  times its expected time, at least ``min_deadline_s``; ``first_deadline_s`` before a worker's
  speed is known) goes back to the front of its job's queue for any worker, split in halves
  unless the worker was simply unreachable; the worker is DOWN until its health check passes.
  When a worker goes DOWN (its health check fails: hung, stopped, gone), its batches in flight
  go back at once, without waiting for their deadlines; should one still be answered later, the
  first answer to each request wins and a late one is stored but never counted twice.
  An error a live worker answers for a batch (a status from its handler: INTERNAL,
  INVALID_ARGUMENT, ...; see ``_WORKER_FAULTS`` for those that are the worker's) fails that
  batch's requests, not the worker: they are retried (a try each, split in halves to isolate
  the bad one) and the worker stays READY, so one client's requests cannot take workers out
  for everyone; UNIMPLEMENTED (the worker does not serve that kind) fails the job at once.
  A failed request is retried on another READY worker when there is one it has not failed on.
  Requests answered with a retryable ``ItemError`` are requeued alone. Each request has
  ``max_attempts`` tries; one that fails on every try fails the job, naming the request and the
  reasons. Requests a stopping worker answers with a ``cancelled`` ``ItemError`` (it ended the
  batch early, see ``Backend.interrupt``) are requeued without counting a try, and the worker
  is out until its health check passes. Answers are keyed by content and each request counts
  once, when first answered (a request is in one batch at a time, but for the batches of a
  DOWN worker), so nothing is lost or counted twice. A job with no READY worker
  for ``no_worker_timeout_s`` fails, naming its workers and their last errors.
- **Cancel** removes a job at once: no batch of it is sent after ``cancel`` returns; batches
  already in flight finish and their answers are still stored (``settle`` waits for them; an
  interrupted worker returns them early with what it finished).

The dispatch state of a job is only (its plan, the answers stored): every dispatch starts from
the requests without a stored answer, so a job can be resumed by any coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from evalfleet.common.errors import EvalfleetError, FailedPreconditionError, UnavailableError
from evalfleet.common.logging import get_logger
from evalfleet.common.metrics import CoordinatorEvents
from evalfleet.server.batching import Batch, KindQueue, kind_queues
from evalfleet.server.registry import DOWN, Worker, WorkerRegistry, describe_worker
from evalfleet.server.store.base import AnswerSlices
from evalfleet.server.wire import MalformedResponseError, split_response
from evalfleet.server.workers import RequestFailedError, WorkItem
from evalfleet.v1 import inference_pb2 as ipb

log = get_logger("scheduler")

#: Batch failures that are the worker's (the transport: unreachable, hung past the deadline,
#: stopping; or it refuses the coordinator's credentials): it is taken out until its health
#: check passes. Any other status is an answer of the worker's handler about the batch's
#: requests (INTERNAL, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...): the requests fail, the
#: worker stays READY.
_WORKER_FAULTS = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                  grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAUTHENTICATED,
                  grpc.StatusCode.PERMISSION_DENIED}
#: Batch failures that fail the job at once: the worker does not serve this request kind.
_JOB_FAULTS = {grpc.StatusCode.UNIMPLEMENTED}


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
            self._finish()

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

    def _finish(self, error: BaseException | None = None) -> None:
        if not self.finished.done():
            if error is None:
                self.finished.set_result(None)
            else:
                self.finished.set_exception(error)


@dataclass(eq=False)
class _Flight:
    """A batch on the wire to a worker. ``abandoned``: its worker went DOWN and its requests
    went back to the job's queue; the call may still return (its answers are then stored, the
    new ones counted, and its failure ignored)."""

    worker: Worker
    job: JobDispatch
    batch: Batch
    task: asyncio.Task | None = None
    abandoned: bool = False
    landed: bool = False


class SpeedBook:
    """Seconds per request, learned from answered batches: per (worker, job, kind), falling
    back to (worker, kind), then to (model, kind) over every worker of the model."""

    def __init__(self) -> None:
        self._spi: dict[tuple, float] = {}
        self._last_size: dict[tuple, int] = {}

    def seconds_per_item(self, worker: Worker, job: JobDispatch, kind: str) -> float | None:
        for key in ((worker.address, job.job_id, kind), (worker.address, kind),
                    (job.model_key, kind)):
            if key in self._spi:
                return self._spi[key]
        return None

    def last_size(self, worker: Worker, job: JobDispatch, kind: str) -> int | None:
        return self._last_size.get((worker.address, job.job_id, kind))

    def record(self, worker: Worker, job: JobDispatch, kind: str, items: int,
               seconds: float) -> None:
        spi = max(seconds, 1e-6) / max(items, 1)
        self._last_size[(worker.address, job.job_id, kind)] = items
        for key in ((worker.address, job.job_id, kind), (worker.address, kind),
                    (job.model_key, kind)):
            old = self._spi.get(key)
            self._spi[key] = spi if old is None else 0.5 * old + 0.5 * spi

    def forget_job(self, job_id: str) -> None:
        for book in (self._spi, self._last_size):
            for key in [k for k in book if len(k) == 3 and k[1] == job_id]:
                del book[key]


class Scheduler:
    """Hands the batches of every running job to the registry's workers."""

    def __init__(self, registry: WorkerRegistry, config: SchedulerConfig | None = None) -> None:
        self.registry = registry
        self.config = config or SchedulerConfig()
        self.jobs: dict[str, JobDispatch] = {}
        self.speed = SpeedBook()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._batches: set[asyncio.Task] = set()
        self._flights: set[_Flight] = set()
        self._closed = False
        #: what it reports (counted when --metrics_port serves them: CoordinatorMetrics)
        self.metrics: CoordinatorEvents = CoordinatorEvents()
        registry.on_change(self.wake)

    def wake(self) -> None:
        self._wake.set()

    def pump(self) -> None:
        """Hand out batches now (new requests were added): the loop would only after a few
        turns of the event loop, which a caller preparing more work may not give it."""
        self._pump_safely()
        self.wake()

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="scheduler")

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every batch in flight to return and store its
        answers (after ``stop``, what interrupted workers finished); False if some did not."""
        # A batch abandoned on a DOWN worker may never return: its requests went elsewhere.
        pending = [f.task for f in self._flights
                   if f.task is not None and not f.abandoned and not f.task.done()]
        if not pending:
            return True
        _, late = await asyncio.wait(pending, timeout=timeout)
        return not late

    async def close(self) -> None:
        # The flag ends the loop even when a cancel is swallowed by asyncio.wait_for racing
        # its timeout (Python 3.11), which left close() waiting forever.
        self._closed = True
        self.wake()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._batches):
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)

    # -- jobs ---------------------------------------------------------------------------------

    async def run(self, dispatch: JobDispatch) -> None:
        """Compute every request of ``dispatch``; returns when all are answered and stored.

        Raises the job's failure (:class:`RequestFailedError`, ``UnavailableError``, ...).
        Cancelling the caller stops the job's dispatch at once (see :meth:`stop`).
        """
        if dispatch.sealed and dispatch.remaining == 0:
            return
        active = [j.served_s for j in self.jobs.values() if j.pending]
        dispatch.served_s = min(active) if active else 0.0
        self.jobs[dispatch.job_id] = dispatch
        self.start()
        self.wake()
        try:
            await asyncio.shield(dispatch.finished)
        finally:
            self.stop(dispatch.job_id)

    def stop(self, job_id: str) -> None:
        """No further batch of the job is sent; those in flight still store their answers."""
        dispatch = self.jobs.pop(job_id, None)
        if dispatch is not None:
            dispatch.stopped = True
            self.speed.forget_job(job_id)
            if not dispatch.finished.done():
                dispatch.finished.cancel()

    def _fail(self, dispatch: JobDispatch, error: BaseException) -> None:
        log.warning("job_dispatch_failed", job=dispatch.job_id, error=str(error))
        dispatch.stopped = True
        self.jobs.pop(dispatch.job_id, None)
        dispatch._finish(error)

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            self._wake.clear()
            self._pump_safely()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    def _pump_safely(self) -> None:
        """Hand out batches and fail starving jobs; an error is logged, never raised (the
        loop must survive; the jobs get their errors)."""
        try:
            self._requeue_from_down_workers()
            self._pump()
            self._check_starving()
        except Exception:  # noqa: BLE001
            log.exception("scheduler_pump_crashed")

    def _pump(self) -> None:
        """Fill every free worker slot with the batch of the least-served eligible job."""
        while True:
            workers = [w for w in self.registry.workers.values() if w.free_slots > 0]
            if not workers or not self.jobs:
                return
            sent = False
            for worker in sorted(workers, key=lambda w: w.in_flight):
                job = min((j for j in self.jobs.values() if j.pending and j.eligible(worker)),
                          key=lambda j: j.served_s, default=None)
                if job is None:
                    continue
                batch, expected = self._take(worker, job)
                if batch is None:
                    continue
                job.served_s += expected if expected is not None else len(batch) * 1e-3
                self._send(worker, job, batch, expected)
                sent = True
            if not sent:
                return

    def _take(self, worker: Worker, job: JobDispatch) -> tuple[Batch | None, float | None]:
        """The job's next batch for ``worker``, sized by its expected time."""
        cfg = self.config
        for queue in job.queues:
            if not queue.pending:
                continue
            spi = self.speed.seconds_per_item(worker, job, queue.kind)
            if spi is None:
                if worker.jobs_in_flight.get(job.job_id):
                    return None, None  # one probe batch until the worker's speed is known
                size = cfg.initial_batch_items
            else:
                size = int(cfg.batch_seconds / spi)
                last = self.speed.last_size(worker, job, queue.kind)
                if last is not None:
                    size = min(size, int(last * cfg.growth))
            size = max(1, min(size, cfg.max_batch_items))
            if job.sealed:
                # The tail: spread what is left (handed out or not) over the workers that can
                # take it. Counting the batches in flight keeps the shares equal: counting only
                # the requests not handed out would give each next worker a smaller share than
                # the last, and a tail of ever smaller batches.
                sharing = len(self.registry.serving(job.model_key, job.allowed)) or 1
                outstanding = job.pending + job.in_flight_items
                size = max(1, min(size, math.ceil(outstanding / sharing)))
            batch = self._take_from(worker, job, queue, size)
            if batch is not None:
                return batch, (spi * len(batch) if spi is not None else None)
        return None, None

    def _take_from(self, worker: Worker, job: JobDispatch, queue: KindQueue,
                   size: int) -> Batch | None:
        """``queue.take`` for ``worker``, leaving the retries of requests that failed on it to
        the job's other READY workers, when it has some that they did not fail on."""
        same_context = worker.info is not None and worker.info.capabilities.same_context
        held: list[list[int]] = []
        others: set[str] | None = None
        while job.failed_on and queue.retry:
            failed = set().union(*(job.failed_on.get((id(queue), i), ())
                                   for i in queue.retry[0]))
            if worker.address not in failed:
                break
            if others is None:
                others = {w.address for w in self.registry.serving(job.model_key, job.allowed)}
            if not others - failed:
                break
            held.append(queue.retry.popleft())
        try:
            return queue.take(size, same_context=same_context)
        finally:
            queue.retry.extendleft(reversed(held))

    def _deadline(self, worker: Worker, expected: float | None) -> float:
        cfg = self.config
        if expected is None:
            return cfg.first_deadline_s
        return max(cfg.min_deadline_s, cfg.deadline_factor * expected * (1 + worker.in_flight))

    def _send(self, worker: Worker, job: JobDispatch, batch: Batch,
              expected: float | None) -> None:
        deadline = self._deadline(worker, expected)
        worker.in_flight += 1
        worker.jobs_in_flight[job.job_id] = worker.jobs_in_flight.get(job.job_id, 0) + 1
        job.in_flight += 1
        job.in_flight_items += len(batch)
        job.batches_sent += 1
        flight = _Flight(worker, job, batch)
        flight.task = task = asyncio.create_task(self._run_batch(flight, deadline))
        self._flights.add(flight)
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    @staticmethod
    def _release_job(flight: _Flight) -> None:
        job = flight.job
        job.in_flight_items -= len(flight.batch)
        job.in_flight -= 1

    def _land(self, flight: _Flight) -> None:
        """The batch's call returned (answered or failed): its slot is free again."""
        flight.landed = True
        self._flights.discard(flight)
        worker, job_id = flight.worker, flight.job.job_id
        if not flight.abandoned:  # an abandoned batch left the job's counts already
            self._release_job(flight)
        worker.in_flight -= 1
        worker.jobs_in_flight[job_id] -= 1
        if worker.jobs_in_flight[job_id] <= 0:
            del worker.jobs_in_flight[job_id]
        self.registry._maybe_remove(worker)
        self.wake()

    def _requeue_from_down_workers(self) -> None:
        """The batches in flight on DOWN workers go back to their jobs' queues now, a try
        counted (a request that hangs every worker must not be retried forever), instead of at
        their deadlines (minutes, for a worker's first batch)."""
        for flight in [f for f in self._flights if not f.abandoned and f.worker.state == DOWN]:
            flight.abandoned = True
            self._release_job(flight)
            worker, job, queue = flight.worker, flight.job, flight.batch.queue
            if job.stopped:
                continue
            indices = [i for i in flight.batch.indices if not queue.done[i]]
            reason = f"went DOWN with the batch in flight ({worker.last_error or 'no reason'})"
            self.metrics.batch_failed("worker_down")
            log.warning("batch_requeued_from_down_worker", job=job.job_id,
                        worker=worker.address, items=len(indices), reason=worker.last_error)
            job.notify(f"{len(indices)} requests sent to other workers: worker "
                       f"{worker.address} {reason}")
            if indices:
                self._retry(worker, job, queue, indices, reason, split=True)

    async def _run_batch(self, flight: _Flight, deadline: float) -> None:
        worker, job, batch = flight.worker, flight.job, flight.batch
        started = time.monotonic()
        try:
            try:
                response = await worker.client.call(batch.request_type, batch.payload, deadline)
            except grpc.aio.AioRpcError as exc:
                self._land(flight)
                if flight.abandoned:  # its requests went to other workers already
                    log.info("abandoned_batch_failed", job=job.job_id, worker=worker.address,
                             code=exc.code().name)
                    return
                self._batch_failed(worker, job, batch, exc.code(),
                                   f"{exc.code().name}: {exc.details()}")
                return
            wall = time.monotonic() - started
            self.metrics.batch_answered(batch.queue.kind, wall)
            self._land(flight)
            await self._batch_answered(worker, job, batch, response, wall,
                                       late=flight.abandoned)
        except asyncio.CancelledError:
            if not flight.landed:
                self._land(flight)
            if not flight.abandoned:
                batch.queue.requeue(list(batch.indices))
            raise
        except EvalfleetError as exc:
            self._fail(job, exc)
        except Exception as exc:  # noqa: BLE001 - the job fails with it, not the scheduler
            log.exception("batch_handling_crashed", job=job.job_id, worker=worker.address)
            self._fail(job, exc)

    def _batch_failed(self, worker: Worker, job: JobDispatch, batch: Batch,
                      code: grpc.StatusCode, reason: str) -> None:
        self.metrics.batch_failed(code.name)
        log.warning("batch_failed", job=job.job_id, worker=worker.address, items=len(batch),
                    reason=reason)
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            reason = (f"{reason} (the worker refused the coordinator's credentials: check "
                      "--worker_auth_token_file and the TLS flags)")
        if code in _WORKER_FAULTS:
            self.registry.mark_failed(worker, reason)
        elif code in _JOB_FAULTS:
            self.registry.note_batch_error(worker, reason)
            if not job.stopped:
                self._fail(job, FailedPreconditionError(
                    f"worker {worker.address} rejected a batch of {batch.request_type} "
                    f"requests ({reason})"))
            return
        else:  # the worker answered: an error of these requests, not of the worker
            self.registry.note_batch_error(worker, reason)
            job.notify(f"{len(batch)} requests to retry ({worker.address} answered {reason})")
        if job.stopped:
            return
        self._retry(worker, job, batch.queue, list(batch.indices), reason,
                    split=code != grpc.StatusCode.UNAVAILABLE)

    def _retry(self, worker: Worker, job: JobDispatch, queue: KindQueue, indices: list[int],
               reason: str, *, split: bool, retryable: bool = True) -> None:
        """Requeue requests that failed, or fail the job when one has no try left."""
        indices = [i for i in indices if not queue.done[i]]  # not answered meanwhile elsewhere
        if not indices:
            return
        queue.attempts[indices] += 1
        for i in indices:
            job.failed_on.setdefault((id(queue), i), set()).add(worker.address)
        for i in indices[:1]:
            job.failures.setdefault(queue.ids[i], []).append(f"{worker.address}: {reason}")
        exhausted = [i for i in indices if queue.attempts[i] >= self.config.max_attempts]
        if exhausted or not retryable:
            rid = queue.ids[(exhausted or indices)[0]]
            if not retryable:
                message = f"worker {worker.address} could not answer {job.describe(rid)}: {reason}"
            else:
                others = len(indices) - 1
                also = f" (and {others} other requests of its batch)" if others else ""
                # one line per distinct failure: the same error on every try is said once
                history = "; ".join(dict.fromkeys(
                    job.failures.get(rid, [])[-self.config.max_attempts:]))
                message = (f"{job.describe(rid)}{also} failed on every try "
                           f"({self.config.max_attempts} tries): {history or reason}")
            self._fail(job, RequestFailedError(rid, message))
            return
        self.metrics.retried(len(indices))
        queue.requeue(indices, split=split)
        self.wake()

    async def _batch_answered(self, worker: Worker, job: JobDispatch, batch: Batch,
                              raw: bytes, wall: float, *, late: bool = False) -> None:
        """Store and count a batch's answers, retry its failed requests. ``late``: the batch
        was abandoned (its worker went DOWN) and its requests requeued: only its answers to
        requests still unanswered count; its errors are not retried again."""
        queue = batch.queue
        index = batch.index_array()
        try:
            split = split_response(raw, queue.kind, queue.expected, index)
        except MalformedResponseError as exc:
            self.metrics.batch_failed("malformed_response")
            self.registry.mark_failed(worker, str(exc))
            if not job.stopped and not late:
                self._retry(worker, job, queue, index.tolist(), str(exc), split=False)
            return
        cost = split.cost
        if not late:  # a late batch's wall time includes the time its worker was stopped
            seconds = cost.compute_seconds if cost.compute_seconds > 0 else wall
            self.speed.record(worker, job, queue.kind, len(index), seconds)
        self.registry.mark_succeeded(worker, len(split.answered), cost)
        if len(split.answered):
            answered = index if not split.errors else index[split.answered]
            starts, ends = split.starts, split.ends
            fresh = ~queue.done[answered]
            if not fresh.all():  # answered meanwhile by another worker: the first answer wins
                answered, starts, ends = answered[fresh], starts[fresh], ends[fresh]
            if len(answered):
                # Claimed before the store is awaited, so that a copy of these requests
                # answered meanwhile elsewhere is not counted too.
                queue.done[answered] = True
                ids = queue.ids
                answers = AnswerSlices([ids[i] for i in answered.tolist()], raw, starts, ends)
                await job.on_answers(queue, answered, answers, worker.address, cost)
                job.remaining -= len(answered)
                job.answered += len(answered)
                self.metrics.answered(len(answered))
        if late:
            split.errors.clear()  # its requests were requeued when its worker went DOWN
        self.metrics.item_errors(e for _, e in split.errors)
        cancelled = [int(index[j]) for j, error in split.errors if error.cancelled]
        if cancelled:
            # The worker stopped before these (it is shutting down): not their fault, so no try
            # is counted; the worker is out until its health check passes.
            self.registry.mark_failed(worker, "stopping: it cancelled the rest of a batch")
            if not job.stopped:
                queue.requeue(cancelled)
                self.wake()
        if split.errors and not job.stopped:
            failed = [(int(index[j]), error) for j, error in split.errors if not error.cancelled]
            fatal = next(((i, e) for i, e in failed if not e.retryable), None)
            if fatal is not None:
                self._retry(worker, job, queue, [fatal[0]], fatal[1].message, split=False,
                            retryable=False)
                return
            if failed:
                reason = failed[0][1].message
                log.warning("items_failed_requeue", job=job.job_id, worker=worker.address,
                            items=len(failed), reason=reason)
                job.notify(f"{len(failed)} requests to retry ({worker.address}: {reason})")
                self._retry(worker, job, queue, [i for i, _ in failed], reason, split=False)
                if job.stopped:
                    return
        if job.remaining <= 0 and job.sealed:
            self.jobs.pop(job.job_id, None)
            job._finish()

    def _check_starving(self) -> None:
        """Fail jobs that have had no worker for ``no_worker_timeout_s``."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            serving = self.registry.serving(job.model_key, job.allowed)
            if serving or job.in_flight:
                job.no_worker_since = None
                continue
            if job.no_worker_since is None:
                job.no_worker_since = now
                log.warning("job_waiting_for_workers", job=job.job_id,
                            model=job.model_key[1][:19])
            elif now - job.no_worker_since > self.config.no_worker_timeout_s:
                known = [w for w in self.registry.workers.values()
                         if job.allowed is None or w.address in job.allowed]
                listing = "; ".join(describe_worker(w) for w in known) or "none"
                self._fail(job, UnavailableError(
                    f"no worker serving model {job.model_key[1][:19]} ({job.model_key[0]}) "
                    f"for {self.config.no_worker_timeout_s:.0f} s; workers: {listing}"))
