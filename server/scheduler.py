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
- **Failures** are handled where batches land (:mod:`batch_outcomes`). A job with no READY
  worker for ``no_worker_timeout_s`` fails, naming its workers and their last errors.
- **Cancel** removes a job at once: no batch of it is sent after ``cancel`` returns; batches
  already in flight finish and their answers are still stored (``settle`` waits for them; an
  interrupted worker returns them early with what it finished).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import grpc

from evalfleet.common.errors import EvalfleetError, UnavailableError
from evalfleet.common.logging import get_logger
from evalfleet.common.metrics import CoordinatorEvents
from evalfleet.server.batch_outcomes import BatchOutcomes, Flight
from evalfleet.server.batching import Batch, KindQueue
from evalfleet.server.job_dispatch import AnswerSink, JobDispatch, SchedulerConfig
from evalfleet.server.registry import WorkerRegistry
from evalfleet.server.speed_book import SpeedBook
from evalfleet.server.worker_record import Worker, describe_worker

__all__ = ["AnswerSink", "JobDispatch", "Scheduler", "SchedulerConfig", "SpeedBook"]

log = get_logger("scheduler")


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
        self._flights: set[Flight] = set()
        self._closed = False
        #: how batches land (answers stored, failures retried); it reports to ``metrics``
        self.outcomes = BatchOutcomes(registry, self.config, self.speed, CoordinatorEvents(),
                                      fail=self._fail, wake=self.wake, done=self._done)
        registry.on_change(self.wake)

    @property
    def metrics(self) -> CoordinatorEvents:
        """What it reports (counted when --metrics_port serves them: CoordinatorMetrics)."""
        return self.outcomes.metrics

    @metrics.setter
    def metrics(self, events: CoordinatorEvents) -> None:
        self.outcomes.metrics = events

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
        dispatch.finish(error)

    def _done(self, dispatch: JobDispatch) -> None:
        """Every request of the dispatch is answered and stored."""
        self.jobs.pop(dispatch.job_id, None)
        dispatch.finish()

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
            self.outcomes.requeue_from_down_workers(self._flights)
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
        self.registry.acquire_slot(worker, job.job_id)
        job.in_flight += 1
        job.in_flight_items += len(batch)
        job.batches_sent += 1
        flight = Flight(worker, job, batch)
        flight.task = task = asyncio.create_task(self._run_batch(flight, deadline))
        self._flights.add(flight)
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _land(self, flight: Flight) -> None:
        """The batch's call returned (answered or failed): its slot is free again."""
        flight.landed = True
        self._flights.discard(flight)
        if not flight.abandoned:  # an abandoned batch left the job's counts already
            flight.leave_job()
        self.registry.release_slot(flight.worker, flight.job.job_id)
        self.wake()

    async def _run_batch(self, flight: Flight, deadline: float) -> None:
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
                self.outcomes.batch_failed(worker, job, batch, exc.code(),
                                           f"{exc.code().name}: {exc.details()}")
                return
            wall = time.monotonic() - started
            self.metrics.batch_answered(batch.queue.kind, wall)
            self._land(flight)
            await self.outcomes.batch_answered(worker, job, batch, response, wall,
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
