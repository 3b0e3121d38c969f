"""Lease keeping: the jobs this coordinator holds in the store, renewed by one heartbeat, and
the claim loop that takes over jobs whose coordinator died or handed them back.

Every job a runner runs is held under a lease in the store (``owner``, ``lease_s``): one
heartbeat task renews them all every ``lease_s / 3``; a job whose renewal is refused (another
coordinator claimed it after this one overslept) is stopped at once and its state is no longer
written from here. With ``claim_interval_s`` (``serve coordinator``), a claim loop takes over
jobs whose coordinator died (lease expired) or handed them back, and resumes them under the same
id, reusing every stored answer; a claimed job that finds no worker for its model waits (QUEUED,
handed back, retried) instead of failing.

Each renewal stores the job's progress and usage (``Job.stored_progress``); so does a
checkpoint right after each batch is counted (:meth:`LeaseKeeper.checkpoint`, one write at a
time, at most one every ``CHECKPOINT_INTERVAL_S``), so a job resumed after a kill restarts its
usage from what its stored answers cost, less at most the batches of that last interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from evalfleet.common.logging import get_logger
from evalfleet.server.job import TERMINAL, Job
from evalfleet.server.scheduler import Scheduler
from evalfleet.server.store import ACTIVE_STATES, JobRecord, JobStore
from evalfleet.v1 import coordinator_pb2 as cpb

log = get_logger("jobs")

#: Least seconds between two usage checkpoints of one job (batches counted meanwhile are
#: written together by the next one).
CHECKPOINT_INTERVAL_S = 0.1


class LeaseKeeper:
    """Holds, renews, claims and loses the leases of a runner's jobs."""

    def __init__(self, store: JobStore, scheduler: Scheduler, jobs: dict[str, Job], *,
                 owner: str, lease_s: float, claim_interval_s: float | None,
                 resume: Callable[[JobRecord], Awaitable[None]]) -> None:
        self.store = store
        self.scheduler = scheduler
        self.jobs = jobs
        self.owner = owner
        self.lease_s = lease_s
        #: seconds between claims of abandoned jobs (None: this runner claims none)
        self.claim_interval_s = claim_interval_s
        self._resume = resume
        #: ids of the jobs whose lease this runner holds (renewed by the heartbeat)
        self.held: set[str] = set()
        self.retry_at: dict[str, float] = {}  # claimed jobs waiting for workers: next try
        self.resuming: dict[str, asyncio.Task] = {}
        self._loops: list[asyncio.Task] = []
        self._checkpoints: dict[str, asyncio.Task] = {}  # job id -> its checkpoint writer
        self._dirty: set[str] = set()  # jobs counted again while their checkpoint was written

    def start(self) -> None:
        """Start the lease heartbeat (and the claim loop when ``claim_interval_s`` is set)."""
        if self._loops:
            return
        self._loops.append(asyncio.create_task(self._heartbeat(), name="job-leases"))
        if self.claim_interval_s:
            self._loops.append(asyncio.create_task(self._claim_loop(), name="job-claims"))

    async def stop(self) -> None:
        """Stop the heartbeat, the claim loop and the resumptions under way."""
        tasks = [*self._loops, *self.resuming.values(), *self._checkpoints.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops.clear()
        self.resuming.clear()
        self._checkpoints.clear()

    def checkpoint(self, job_id: str) -> None:
        """Store the held job's progress and usage soon (a batch of it was just counted): one
        write at a time per job; calls while one is under way ask for one more after it."""
        if job_id in self._checkpoints:
            self._dirty.add(job_id)
            return
        if job_id in self.held:
            self._checkpoints[job_id] = asyncio.create_task(self._write_checkpoints(job_id),
                                                            name=f"checkpoint-{job_id}")

    async def _write_checkpoints(self, job_id: str) -> None:
        try:
            while True:
                self._dirty.discard(job_id)
                progress = self._progress(job_id)
                if progress is None or job_id not in self.held:
                    return
                try:
                    await self.store.renew_lease(job_id, self.owner, self.lease_s,
                                                 progress=progress)
                except Exception:  # noqa: BLE001 - the next renewal or checkpoint stores it
                    log.warning("job_checkpoint_failed", job=job_id, owner=self.owner)
                if job_id not in self._dirty:
                    return
                await asyncio.sleep(CHECKPOINT_INTERVAL_S)
        finally:  # no await between the last look at _dirty and this
            self._checkpoints.pop(job_id, None)

    async def release_all(self) -> None:
        """Hand every held lease back to the store (another coordinator takes the jobs)."""
        released = []
        for job_id in sorted(self.held):
            with contextlib.suppress(Exception):
                if await self.store.release(job_id, self.owner):
                    released.append(job_id)
        self.held.clear()
        if released:
            log.info("jobs_released", jobs=released, owner=self.owner)

    async def claim_once(self) -> list[str]:
        """Claim the store's abandoned jobs (lease expired, or handed back) and start resuming
        them; returns the ids claimed. Jobs waiting for workers are retried after a pause."""
        claimed = []
        now = time.monotonic()
        for job_id in [i for i, at in self.retry_at.items() if at <= now]:
            del self.retry_at[job_id]  # due (or taken by another coordinator): forgotten
        for record in await self.store.list_claimable():
            if self.retry_at.get(record.id, 0.0) > now or record.id in self.resuming:
                continue
            job = self.jobs.get(record.id)
            if job is not None and not job.lost and job.state not in TERMINAL:
                continue  # still ours (a renewal ran late); the heartbeat renews it
            taken = await self.store.claim_job(record.id, self.owner, self.lease_s)
            if taken is None:
                continue  # another coordinator was faster
            self.held.add(taken.id)
            claimed.append(taken.id)
            log.info("job_claimed", job=taken.id, owner=self.owner, attempts=taken.attempts,
                     previous_state=cpb.EvaluationState.Name(taken.state))
            task = asyncio.create_task(self._resume(taken), name=f"resume-{taken.id}")
            self.resuming[taken.id] = task
            task.add_done_callback(lambda _t, i=taken.id: self.resuming.pop(i, None))
        return claimed

    async def wait_for_workers(self, job_id: str, reason: str) -> None:
        """Keep a claimed job QUEUED with what it waits for, hand it back and retry later."""
        message = f"waiting for workers: {reason}"
        await self.store.transition(job_id, self.owner, ACTIVE_STATES,
                                    cpb.EVALUATION_STATE_QUEUED, error=message)
        await self.store.release(job_id, self.owner)
        self.held.discard(job_id)
        self.retry_at[job_id] = time.monotonic() + max(2.0, 2 * (self.claim_interval_s or 0))
        log.info("job_waiting_for_workers", job=job_id, reason=reason, owner=self.owner)

    async def fail_claimed(self, job_id: str, error: str) -> None:
        """A claimed job that no retry can run (bad spec or tasks): FAILED, with the reason."""
        self.held.discard(job_id)
        self.retry_at.pop(job_id, None)
        if await self.store.transition(job_id, self.owner, ACTIVE_STATES,
                                       cpb.EVALUATION_STATE_FAILED, error=error) is not None:
            log.warning("job_failed", job=job_id, error=error, owner=self.owner)
            self.scheduler.metrics.job_ended("EVALUATION_STATE_FAILED")

    async def _claim_loop(self) -> None:
        while True:
            try:
                await self.claim_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the store may be briefly unreachable
                log.exception("job_claim_failed", owner=self.owner)
            await asyncio.sleep(self.claim_interval_s or 1.0)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            for job_id in sorted(self.held):
                try:
                    kept = await self.store.renew_lease(job_id, self.owner, self.lease_s,
                                                        progress=self._progress(job_id))
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - retried at the next beat
                    log.exception("job_lease_renewal_failed", job=job_id, owner=self.owner)
                    continue
                if not kept and job_id in self.held:
                    record = await self.store.get_job(job_id)
                    self.lose(job_id, record)

    def _progress(self, job_id: str) -> bytes | None:
        """The job's progress as stored with its lease (None: a job still being resumed
        keeps what is stored)."""
        job = self.jobs.get(job_id)
        if job is None or job.lost:
            return None
        return job.stored_progress()

    def lose(self, job_id: str, record: JobRecord | None = None) -> None:
        """The store refused to renew the job's lease: stop it, write nothing more. When it
        was cancelled (through another coordinator), its watchers here see it end so."""
        self.held.discard(job_id)
        job = self.jobs.get(job_id)
        if job is None or job.state in TERMINAL:
            return  # it ended meanwhile (or is still being resumed: that notices by itself)
        job.lost = True
        self.scheduler.stop(job_id)
        if job.runner is not None:
            job.runner.cancel()
        if record is not None and record.state == cpb.EVALUATION_STATE_CANCELLED:
            log.info("job_cancelled_elsewhere", job=job_id, owner=self.owner)
            job.state, job.error = record.state, record.error
            job.publish("cancelled")
            return
        log.warning("job_lease_lost", job=job_id, owner=self.owner)
        job.publish("lease lost: another coordinator runs this job now")
