"""Computing a job's missing answers on its workers, storing each batch as it returns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evalfleet.common.logging import get_logger
from evalfleet.server.job import Job
from evalfleet.server.store import JobStore
from evalfleet.server.workers import BatchResult, RequestFailedError, make_batches

log = get_logger("dispatch")


def _owners(job: Job) -> dict[str, list[str]]:
    """answer id -> the tasks that use it."""
    owners: dict[str, list[str]] = {}
    for plan in job.plan.tasks:
        for aid in plan.answer_ids:
            owners.setdefault(aid, []).append(plan.task.name)
    return owners


def _count_done(job: Job, answered: Iterable[str], owners: dict[str, list[str]]) -> None:
    for aid in answered:
        for task_name in owners.get(aid, ()):
            job.done[task_name] = job.done.get(task_name, 0) + 1


def _cost_note(result: BatchResult) -> str:
    cost = result.cost
    notes = []
    if cost.retries:
        notes.append(f"{cost.retries} HTTP retries")
    if cost.throttled_seconds:
        notes.append(f"throttled {cost.throttled_seconds:.1f} s by the API")
    if result.errors:
        notes.append(f"{len(result.errors)} requests to retry")
    return f" ({', '.join(notes)})" if notes else ""


async def compute_missing(job: Job, store: JobStore, *, batch_items: int) -> None:
    """Send the job's requests without a stored answer to its workers.

    Every batch's answers are written to the store when it returns, under the model
    fingerprint, so an interrupted job loses at most its batches in flight. A request that
    fails on every try fails the job with the task, document and reason named.
    """
    fingerprint = job.model_info.fingerprint
    owners = _owners(job)
    cached = await store.get_answers(fingerprint, list(job.plan.work))
    _count_done(job, cached.keys(), owners)
    missing = [w for aid, w in job.plan.work.items() if aid not in cached]
    job.publish(f"{len(cached)} answers from the store, {len(missing)} to compute")
    log.info("job_dispatch", job=job.id, cached=len(cached), to_compute=len(missing))

    async def on_result(_batch: Any, result: BatchResult) -> None:
        await store.put_answers(fingerprint, result.answers.items())
        _merge_cost(job, result)
        _count_done(job, result.answers.keys(), owners)
        job.publish(f"batch of {len(result.answers)} done on {result.worker}"
                    f"{_cost_note(result)}")

    try:
        await job.pool.run(make_batches(missing, max_items=batch_items), on_result)
    except RequestFailedError as exc:
        raise RequestFailedError(exc.request_id, exc.worker,
                                 f"{job.plan.describe(exc.request_id)}: {exc.reason}") from exc


def _merge_cost(job: Job, result: BatchResult) -> None:
    total, cost = job.cost, result.cost
    for name in ("positions_computed", "prompt_tokens", "completion_tokens", "http_requests",
                 "retries"):
        setattr(total, name, getattr(total, name) + getattr(cost, name))
    total.throttled_seconds += cost.throttled_seconds
    total.compute_seconds += cost.compute_seconds
