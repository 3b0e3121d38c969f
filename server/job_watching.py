"""Watching a job: its events from memory when this process runs it, otherwise polled from the
store until it ends or this process takes it over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from evalfleet.common.errors import NotFoundError
from evalfleet.server.job import TERMINAL, Job
from evalfleet.server.store import JobRecord, JobStore
from evalfleet.server.store.base import decode_progress
from evalfleet.v1 import coordinator_pb2 as cpb


class JobWatcher:
    """The event streams of jobs, local or followed from the store."""

    def __init__(self, store: JobStore, jobs: dict[str, Job], *, owner: str,
                 follow_poll_s: float = 1.0) -> None:
        self.store = store
        self.jobs = jobs
        self.owner = owner
        #: seconds between store reads while following a job another process runs
        self.follow_poll_s = follow_poll_s

    async def watch(self, job_id: str) -> AsyncIterator[cpb.EvaluationEvent]:
        """Every event of the job so far, then new ones until it ends.

        A job this process does not run (a restarted coordinator before its claim, or another
        coordinator's job on a shared store) is followed from the store, polled, until it ends
        or this process takes it over; NOT_FOUND only for a job the store does not have.
        """
        last: tuple | None = None
        while True:
            job = self.jobs.get(job_id)
            if job is not None and not job.lost:
                async for event in self._watch_local(job):
                    yield event
                if not job.lost:
                    return
                continue
            record = await self.store.get_job(job_id)
            if record is None:
                raise NotFoundError(f"evaluation '{job_id}' not found")
            key = (record.state, record.error, record.owner)
            if key != last:
                last = key
                stored = decode_progress(record.progress)
                yield cpb.EvaluationEvent(id=record.id, state=record.state,
                                          progress=stored.progress, usage=stored.usage,
                                          message=_stored_message(record, self.owner))
            if record.state in TERMINAL:
                return
            await asyncio.sleep(self.follow_poll_s)

    @staticmethod
    async def _watch_local(job: Job) -> AsyncIterator[cpb.EvaluationEvent]:
        queue: asyncio.Queue[cpb.EvaluationEvent] = asyncio.Queue()
        job.subscribers.append(queue)
        try:
            for event in list(job.history):
                yield event
            while job.state not in TERMINAL and not job.lost:
                event = await queue.get()
                yield event
            while not queue.empty():
                yield queue.get_nowait()
        finally:
            job.subscribers.remove(queue)


def _stored_message(record: JobRecord, owner: str) -> str:
    """The event message of a job followed from the store."""
    if record.state in TERMINAL:
        return "stored evaluation" + (f": {record.error}" if record.error else "")
    if record.error:  # e.g. "waiting for workers: ..."
        return record.error
    if record.owner and record.owner != owner:
        return f"run by coordinator {record.owner}"
    return "waiting to be claimed by a coordinator"
