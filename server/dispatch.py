"""Computing a job's missing answers on the fleet, storing each batch as it returns."""

from __future__ import annotations

import asyncio

import numpy as np

from evalfleet.common.logging import get_logger
from evalfleet.server.batching import KindQueue
from evalfleet.server.job import Job
from evalfleet.server.scheduler import JobDispatch, Scheduler
from evalfleet.server.store import JobStore
from evalfleet.v1 import inference_pb2 as ipb

log = get_logger("dispatch")


def _owners(job: Job) -> dict[str, list[str]]:
    """answer id -> the tasks that use it."""
    owners: dict[str, list[str]] = {}
    for plan in job.plan.tasks:
        for aid in plan.answer_ids:
            owners.setdefault(aid, []).append(plan.task.name)
    return owners


class TaskOwners:
    """Which tasks each request of a queue counts for, to count progress per batch."""

    def __init__(self, ids: list[str], first: dict[str, int],
                 extra: dict[str, list[int]]) -> None:
        get = first.get
        self.first = np.fromiter((get(rid, -1) for rid in ids), dtype=np.int64, count=len(ids))
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
    return f" ({', '.join(notes)})" if notes else ""


#: Requests looked up in the store at a time; dispatch starts after the first chunk, so the
#: look-up of the rest overlaps with the workers' computing.
LOOKUP_CHUNK = 8192


async def compute_missing(job: Job, store: JobStore, scheduler: Scheduler) -> None:
    """Send the job's requests without a stored answer to the workers of its model.

    Every batch's answers are written to the store when it returns, under the model
    fingerprint, so an interrupted job loses at most its batches in flight (a few seconds of
    worker time each). A request that fails on every try fails the job with the task, document
    and reason named. What is left to do is derived from (plan, stored answers) alone.
    """
    fingerprint = job.model_info.fingerprint
    owners = _owners(job)
    names = [p.task.name for p in job.plan.tasks]
    index_of = {name: i for i, name in enumerate(names)}
    first = {rid: index_of[tasks[0]] for rid, tasks in owners.items()}
    extra = {rid: [index_of[t] for t in tasks[1:]] for rid, tasks in owners.items()
             if len(tasks) > 1}
    tasks_of: dict[int, TaskOwners] = {}

    async def on_answers(queue: KindQueue, indices: np.ndarray,
                         answers: list[tuple[str, bytes]], worker: str,
                         cost: ipb.BatchCost) -> None:
        await store.put_answers(fingerprint, answers)
        _merge_cost(job, cost)
        job.served_by.add(worker)
        counts = tasks_of[id(queue)].count(indices, len(names))
        for name, n in zip(names, counts.tolist(), strict=True):
            if n:
                job.done[name] = job.done.get(name, 0) + n
        job.publish(f"batch of {len(answers)} done on {worker}{_cost_note(cost)}")

    dispatch = JobDispatch.build(job.id, (job.model_info.backend, fingerprint), [],
                                 on_answers, config=scheduler.config, allowed=job.allowed,
                                 describe=job.plan.describe, notify=job.publish, sealed=False)
    job.dispatch = dispatch
    running = asyncio.create_task(scheduler.run(dispatch))
    try:
        work = job.plan.work
        ids = list(work)
        cached_total = 0
        for start in range(0, len(ids), LOOKUP_CHUNK):
            if running.done():
                break  # the job failed (or was stopped) meanwhile
            chunk = ids[start:start + LOOKUP_CHUNK]
            cached = await store.get_answers(fingerprint, chunk)
            cached_total += len(cached)
            for aid in cached:
                for task_name in owners.get(aid, ()):
                    job.done[task_name] = job.done.get(task_name, 0) + 1
            added = dispatch.add([work[aid] for aid in chunk if aid not in cached])
            for queue in added:
                tasks_of[id(queue)] = TaskOwners(queue.ids, first, extra)
            scheduler.wake()
        missing = len(ids) - cached_total
        job.publish(f"{cached_total} answers from the store, {missing} to compute")
        log.info("job_dispatch", job=job.id, cached=cached_total, to_compute=missing)
        dispatch.seal()
    except BaseException:
        running.cancel()
        raise
    await running


def _merge_cost(job: Job, cost: ipb.BatchCost) -> None:
    total = job.cost
    for name in ("positions_computed", "prompt_tokens", "completion_tokens", "http_requests",
                 "retries"):
        setattr(total, name, getattr(total, name) + getattr(cost, name))
    total.throttled_seconds += cost.throttled_seconds
    total.compute_seconds += cost.compute_seconds
