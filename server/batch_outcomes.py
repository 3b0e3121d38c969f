"""What happens to a batch once its call returns or its worker goes DOWN: answers stored and
counted, failures retried or fatal.

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
DOWN worker), so nothing is lost or counted twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from evalfleet.common.errors import FailedPreconditionError
from evalfleet.common.logging import get_logger
from evalfleet.common.metrics import CoordinatorEvents
from evalfleet.server.batching import Batch, KindQueue
from evalfleet.server.job_dispatch import JobDispatch, SchedulerConfig
from evalfleet.server.registry import WorkerRegistry
from evalfleet.server.speed_book import SpeedBook
from evalfleet.server.store.base import AnswerSlices
from evalfleet.server.wire import MalformedResponseError, split_response
from evalfleet.server.worker_record import DOWN, Worker
from evalfleet.server.workers import RequestFailedError

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


@dataclass(eq=False)
class Flight:
    """A batch on the wire to a worker. ``abandoned``: its worker went DOWN and its requests
    went back to the job's queue; the call may still return (its answers are then stored, the
    new ones counted, and its failure ignored)."""

    worker: Worker
    job: JobDispatch
    batch: Batch
    task: asyncio.Task | None = None
    abandoned: bool = False
    landed: bool = False

    def leave_job(self) -> None:
        """The batch no longer counts in its job's in-flight figures."""
        self.job.in_flight_items -= len(self.batch)
        self.job.in_flight -= 1



class BatchOutcomes:
    """Lands batches for the scheduler: stores and counts answers, requeues or fails requests.

    ``fail(dispatch, error)`` ends a job's dispatch with an error, ``wake()`` asks the
    scheduler to hand out batches, ``done(dispatch)`` ends a dispatch whose requests are all
    answered; ``metrics`` is what the scheduler reports to."""

    def __init__(self, registry: WorkerRegistry, config: SchedulerConfig, speed: SpeedBook,
                 metrics: CoordinatorEvents, *,
                 fail: Callable[[JobDispatch, BaseException], None],
                 wake: Callable[[], None], done: Callable[[JobDispatch], None]) -> None:
        self.registry = registry
        self.config = config
        self.speed = speed
        self.metrics = metrics
        self._fail = fail
        self.wake = wake
        self._done = done

    def requeue_from_down_workers(self, flights: Iterable[Flight]) -> None:
        """The batches in flight on DOWN workers go back to their jobs' queues now, a try
        counted (a request that hangs every worker must not be retried forever), instead of at
        their deadlines (minutes, for a worker's first batch)."""
        for flight in [f for f in flights if not f.abandoned and f.worker.state == DOWN]:
            flight.abandoned = True
            flight.leave_job()
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
                self.retry(worker, job, queue, indices, reason, split=True)

    def batch_failed(self, worker: Worker, job: JobDispatch, batch: Batch,
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
        self.retry(worker, job, batch.queue, list(batch.indices), reason,
                    split=code != grpc.StatusCode.UNAVAILABLE)

    def retry(self, worker: Worker, job: JobDispatch, queue: KindQueue, indices: list[int],
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

    async def batch_answered(self, worker: Worker, job: JobDispatch, batch: Batch,
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
                self.retry(worker, job, queue, index.tolist(), str(exc), split=False)
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
                self.retry(worker, job, queue, [fatal[0]], fatal[1].message, split=False,
                            retryable=False)
                return
            if failed:
                reason = failed[0][1].message
                log.warning("items_failed_requeue", job=job.job_id, worker=worker.address,
                            items=len(failed), reason=reason)
                job.notify(f"{len(failed)} requests to retry ({worker.address}: {reason})")
                self.retry(worker, job, queue, [i for i, _ in failed], reason, split=False)
                if job.stopped:
                    return
        if job.remaining <= 0 and job.sealed:
            self._done(job)
