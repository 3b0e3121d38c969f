"""Computing a job's missing answers on the fleet, storing each batch as it returns."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise, repeat

import numpy as np

from evalfleet.common.logging import get_logger
from evalfleet.common.metrics import CoordinatorEvents
from evalfleet.server.batching import KindQueue
from evalfleet.server.capabilities import wants_batch_api
from evalfleet.server.job import Job
from evalfleet.server.provider_batches import compute_by_provider_batches
from evalfleet.server.scheduler import JobDispatch, Scheduler
from evalfleet.server.store import AnswerSlices, JobStore, StoreUnwritableError
from evalfleet.server.usage import worker_counted
from evalfleet.server.workers import WorkItem
from evalfleet.v1 import inference_pb2 as ipb

log = get_logger("dispatch")


def task_owners(job: Job) -> tuple[dict[str, int], dict[str, list[int]]]:
    """answer id -> the index of the first task that uses it, and, for the few answers shared
    by several tasks, the indices of the others."""
    tasks = job.plan.tasks
    first: dict[str, int] = {}
    for index in reversed(range(len(tasks))):  # the first task's index written last
        first.update(dict.fromkeys(tasks[index].answer_ids, index))
    extra: dict[str, list[int]] = {}
    if sum(len(set(plan.answer_ids)) for plan in tasks) == len(first):
        return first, extra  # no answer shared by two tasks (the usual case)
    seen: set[str] = set()
    for index, plan in enumerate(tasks):
        for aid in dict.fromkeys(plan.answer_ids):
            if aid in seen:
                extra.setdefault(aid, []).append(index)
            seen.add(aid)
    return first, extra


class TaskOwners:
    """Which tasks each request of a queue counts for, to count progress per batch."""

    def __init__(self, ids: list[str], first: dict[str, int],
                 extra: dict[str, list[int]]) -> None:
        self.first = np.fromiter(map(first.get, ids, repeat(-1)), dtype=np.int64,
                                 count=len(ids))
        self.extra = {i: extra[rid] for i, rid in enumerate(ids) if rid in extra} \
            if extra else {}
        self.has_extra = np.zeros(len(ids), dtype=bool)
        self.has_extra[list(self.extra)] = True

    def count(self, indices: np.ndarray, n_tasks: int) -> np.ndarray:
        """Requests answered per task among ``indices``."""
        first = self.first[indices]
        counts = np.bincount(first[first >= 0], minlength=n_tasks)
        for i in indices[self.has_extra[indices]].tolist():
            for t in self.extra[i]:
                counts[t] += 1
        return counts


def _cost_note(cost: ipb.BatchCost) -> str:
    notes = []
    if cost.retries:
        notes.append(f"{cost.retries} HTTP retries")
    if cost.throttled_seconds:
        notes.append(f"throttled {cost.throttled_seconds:.1f} s by the API")
    if cost.throttled_responses:
        notes.append(f"{cost.throttled_responses} throttled responses, "
                     f"concurrency now {cost.concurrency}")
    return f" ({', '.join(notes)})" if notes else ""


#: Requests looked up in the store and encoded for the wire at a time; dispatch starts after
#: the first chunk, so the preparation of the rest overlaps with the workers' computing.
LOOKUP_CHUNK = 8192
FIRST_CHUNK = 1024
#: The pause after each chunk, in which the loop handles what returned meanwhile.
CHUNK_YIELD_S = 0.0005
#: Progress events per job while batches return: at most one per this many seconds (a watcher
#: needs progress, not thousands of events a second), plus every batch with a cost note.
PROGRESS_INTERVAL_S = 0.25


async def compute_missing(job: Job, store: JobStore, scheduler: Scheduler) -> None:
    """Send the job's requests without a stored answer to the workers of its model.

    Every batch's answers are written to the store when it returns, under the model
    fingerprint, so an interrupted job loses at most its batches in flight (a few seconds of
    worker time each). A request that fails on every try fails the job with the task, document
    and reason named. What is left to do is derived from (plan, stored answers) alone.
    """
    fingerprint = job.model_info.fingerprint
    names = [p.task.name for p in job.plan.tasks]
    first, extra = task_owners(job)
    if wants_batch_api(job.parsed.model_args):
        # What the provider's batches answer is in the store before the online pass below,
        # which computes what is left (rolling loglikelihood requests, which have no batch).
        await compute_by_provider_batches(job, store, scheduler, (first, extra), store_answers)
    tasks_of: dict[int, TaskOwners] = {}
    progress = _ProgressEvents(job)

    async def on_answers(queue: KindQueue, indices: np.ndarray, answers: AnswerSlices,
                         worker: str, cost: ipb.BatchCost) -> None:
        await store_answers(store, fingerprint, answers, job, scheduler.metrics)
        _merge_cost(job, cost)
        job.served_by.add(worker)
        job.usage.count_batch(queue.kind, answers, tasks_of[id(queue)].first[indices], names,
                              worker_counted(queue.kind, cost))
        counts = tasks_of[id(queue)].count(indices, len(names))
        for name, n in zip(names, counts.tolist(), strict=True):
            if n:
                job.done[name] = job.done.get(name, 0) + n
        progress.batch(len(answers), worker, _cost_note(cost))

    dispatch = JobDispatch.build(job.id, (job.model_info.backend, fingerprint), [],
                                 on_answers, config=scheduler.config, allowed=job.allowed,
                                 describe=job.plan.describe, notify=job.publish, sealed=False)
    job.dispatch = dispatch
    running = asyncio.create_task(scheduler.run(dispatch))
    await asyncio.sleep(0)  # the job registers with the scheduler

    def add(items: list[WorkItem]) -> None:
        for queue in dispatch.add(items):
            tasks_of[id(queue)] = TaskOwners(queue.ids, first, extra)
        scheduler.pump()  # the first batches leave before the next chunk is prepared

    try:
        work = job.plan.work
        ids = list(work)
        stored = await store.has_answers(fingerprint)  # none: no look-up at all
        cached_total = 0
        # A small first chunk: the first batches go out within milliseconds.
        bounds = [0, *range(min(FIRST_CHUNK, len(ids)), len(ids), LOOKUP_CHUNK), len(ids)]
        for start, end in pairwise(bounds):
            if running.done():
                break  # the job failed (or was stopped) meanwhile
            chunk = ids[start:end]
            cached = await store.get_answers(fingerprint, chunk) if stored else {}
            cached_total += len(cached)
            dispatch.from_store = cached_total
            for aid in cached:
                for index in (first[aid], *extra.get(aid, ())):
                    job.done[names[index]] = job.done.get(names[index], 0) + 1
            add([work[aid] for aid in chunk if aid not in cached] if cached
                else list(map(work.__getitem__, chunk)))
            # Let the batches returned meanwhile be handled (a response takes several turns
            # of the loop) and new ones be sent, while the rest is prepared.
            await asyncio.sleep(CHUNK_YIELD_S)
        missing = len(work) - cached_total
        scheduler.metrics.dispatched(len(work), cached_total)
        job.publish(f"{cached_total} answers from the store, {missing} to compute")
        log.info("job_dispatch", job=job.id, cached=cached_total, to_compute=missing)
        dispatch.seal()
    except BaseException:
        running.cancel()
        raise
    try:
        await running
    finally:
        progress.flush()


#: Seconds between tries to write answers to a store that cannot be written (doubling up to
#: the second); the job waits meanwhile, its answers kept in memory.
STORE_RETRY_S = (0.5, 5.0)


async def store_answers(store: JobStore, fingerprint: str, answers: AnswerSlices, job: Job,
                        metrics: CoordinatorEvents) -> None:
    """Write a batch's answers; while the store cannot be written (``StoreUnwritableError``: a
    read-only or immutable file, a full disk) keep them and try again, saying so once on the
    job's events and in the log, so nothing computed is lost and the job goes on when it can."""
    delay, longest = STORE_RETRY_S
    failing = False
    while True:
        try:
            await metrics.timed_write("answers", store.put_answer_slices(fingerprint, answers))
        except StoreUnwritableError as exc:
            if not failing:
                log.warning("store_unwritable", job=job.id, error=exc.message)
                job.publish(f"the store cannot be written ({exc.message}); the job waits, "
                            "its answers kept, and tries again")
                failing = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)
            continue
        if failing:
            log.info("store_writable_again", job=job.id)
            job.publish("the store can be written again; the job goes on")
        return


class _ProgressEvents:
    """A job's "batch done" events, coalesced to one per ``PROGRESS_INTERVAL_S``."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.last = 0.0
        self.batches = 0
        self.answers = 0
        self.workers: set[str] = set()

    def batch(self, answers: int, worker: str, note: str) -> None:
        self.batches += 1
        self.answers += answers
        self.workers.add(worker)
        now = time.monotonic()
        if note or now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            self.flush(note)

    def flush(self, note: str = "") -> None:
        """Publish what returned since the last event, if anything."""
        if not self.batches:
            return
        on = ", ".join(sorted(self.workers))
        what = (f"batch of {self.answers}" if self.batches == 1
                else f"{self.batches} batches ({self.answers} requests)")
        self.job.publish(f"{what} done on {on}{note}")
        self.batches = self.answers = 0
        self.workers.clear()


def _merge_cost(job: Job, cost: ipb.BatchCost) -> None:
    total = job.cost
    for name in ("positions_computed", "prompt_tokens", "completion_tokens", "http_requests",
                 "retries", "cached_tokens", "reasoning_tokens"):
        setattr(total, name, getattr(total, name) + getattr(cost, name))
    total.throttled_seconds += cost.throttled_seconds
    total.compute_seconds += cost.compute_seconds
    total.throttled_responses += cost.throttled_responses
    if cost.concurrency:
        total.concurrency = cost.concurrency
