"""Running evaluation jobs from spec to results: the thin orchestrator of a coordinator's jobs.

A job is validated and planned when it is created (:mod:`job_setup`: bad specs, tasks, data,
workers or capabilities are reported at once, as statuses) and then run in the background
(:mod:`job_execution`): its missing answers are computed (:mod:`dispatch`), then every task is
scored and the results are stored (:mod:`job_finishing`). Its lease is kept, and abandoned jobs
are claimed and resumed, by :mod:`job_leases`; watchers follow it through :mod:`job_watching`.
A job that is resumed, or a later job on the same model, only computes what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from evalfleet.common.errors import EvalfleetError, FailedPreconditionError, NotFoundError
from evalfleet.common.logging import get_logger
from evalfleet.server.access import AccessPolicy
from evalfleet.server.job import TERMINAL, Job
from evalfleet.server.job_execution import JobExecution
from evalfleet.server.job_finishing import JobFinisher
from evalfleet.server.job_leases import LeaseKeeper
from evalfleet.server.job_setup import JobSetup
from evalfleet.server.job_watching import JobWatcher
from evalfleet.server.registry import WorkerRegistry
from evalfleet.server.scheduler import Scheduler
from evalfleet.server.store import JobRecord, JobStore
from evalfleet.v1 import coordinator_pb2 as cpb

log = get_logger("jobs")

#: The error of a job cancelled by a coordinator that did not run it.
CANCELLED_ELSEWHERE = "cancelled (by a request to another coordinator of its store)"
#: Seconds a coordinator's claim on a job lasts without renewal (see ``server/store``).
DEFAULT_LEASE_S = 30.0
#: Finished jobs kept in memory (retired: spec, state, final progress; a few KB each), newest
#: first; older ones are answered from the store.
KEEP_FINISHED_JOBS = 128


class JobRunner:
    """Runs jobs on the registry's workers and keeps them in the store, under leases.

    It creates, resumes, cancels and hands back jobs; each concern is one collaborator:
    ``setup`` (validation and planning), ``leases`` (heartbeat, claims, lost leases),
    ``execution`` (the run and its states), ``finisher`` (scores, results, samples, sinks) and
    ``watcher`` (event streams).
    """

    def __init__(self, store: JobStore, registry: WorkerRegistry, scheduler: Scheduler, *,
                 data_dir: str | Path | None = None, include_paths: Sequence[str] = (),
                 policy: AccessPolicy | None = None, worker_wait_s: float = 10.0,
                 owner: str | None = None, lease_s: float = DEFAULT_LEASE_S,
                 claim_interval_s: float | None = None, follow_poll_s: float = 1.0,
                 sinks: dict[str, Any] | None = None,
                 confirm_run_unsafe_code: bool = False,
                 keep_finished: int = KEEP_FINISHED_JOBS) -> None:
        self.store = store
        self.registry = registry
        self.scheduler = scheduler
        #: This coordinator's id as the store's job owner (unique per process).
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        self.worker_wait_s = worker_wait_s
        #: the jobs this process runs, and its newest ``keep_finished`` finished (retired) ones
        self.jobs: dict[str, Job] = {}
        self.setup = JobSetup(registry, policy or AccessPolicy(), sinks=sinks,
                              data_dir=data_dir, include_paths=include_paths,
                              confirm_run_unsafe_code=confirm_run_unsafe_code)
        self.leases = LeaseKeeper(store, scheduler, self.jobs, owner=self.owner,
                                  lease_s=lease_s, claim_interval_s=claim_interval_s,
                                  resume=self._resume)
        self.finisher = JobFinisher(store, scheduler, owner=self.owner, sinks=sinks,
                                    confirm_run_unsafe_code=confirm_run_unsafe_code,
                                    lose=self.leases.lose)
        self.execution = JobExecution(store, registry, scheduler, self.leases, self.finisher,
                                      self.jobs, keep_finished=keep_finished)
        self.watcher = JobWatcher(store, self.jobs, owner=self.owner,
                                  follow_poll_s=follow_poll_s)

    @property
    def held(self) -> set[str]:
        """Ids of the jobs whose lease this runner holds."""
        return self.leases.held

    # -- life of the runner --------------------------------------------------------------

    def start(self) -> None:
        """Start the lease heartbeat (and the claim loop when ``claim_interval_s`` is set)."""
        self.leases.start()

    async def close(self) -> None:
        """Graceful stop: unfinished jobs are stopped without a state change and their leases
        released, so another coordinator (or this one restarted) takes them over at once."""
        await self.leases.stop()
        for job in list(self.jobs.values()):
            if job.state in TERMINAL or job.lost:
                continue
            job.lost = True
            self.scheduler.stop(job.id)
            if job.runner is not None:
                job.runner.cancel()
                await asyncio.gather(job.runner, return_exceptions=True)
            job.publish("coordinator stopping: job handed back to the store")
        await self.leases.release_all()

    # -- creating and resuming -----------------------------------------------------------

    async def create(self, spec: cpb.EvaluationSpec) -> Job:
        """Validate, plan and queue a job owned by this runner; errors surface here as
        statuses."""
        parsed = self.setup.parse(spec)
        spec = parsed.spec  # normalised, secrets hidden: what is stored
        allowed = set(spec.worker_addresses) or None
        if allowed:
            self.registry.acquire(allowed)
        try:
            workers = await self.setup.select(spec, parsed, allowed, self.worker_wait_s)
            plan = await self.setup.plan(spec, parsed, workers)
            job = Job(id=uuid.uuid4().hex[:16], parsed=parsed, plan=plan,
                      model_info=workers[0].info, allowed=allowed)
            now = time.time()
            if not await self.store.create_job(JobRecord(
                    job.id, spec.SerializeToString(), job.state, "", now, now,
                    owner=self.owner, lease_until=now + self.lease_s)):
                raise FailedPreconditionError(f"evaluation '{job.id}' already exists")
        except BaseException:
            if allowed:
                self.registry.release(allowed)
            raise
        self.execution.start(job)
        log.info("job_created", job=job.id, tasks=[p.task.name for p in plan.tasks],
                 unique_requests=len(plan.work), model=job.model_info.fingerprint[:19],
                 workers=sorted(w.address for w in workers), owner=self.owner)
        return job

    async def claim_once(self) -> list[str]:
        """Claim the store's abandoned jobs and start resuming them (see :class:`LeaseKeeper`);
        returns the ids claimed."""
        return await self.leases.claim_once()

    async def _resume(self, record: JobRecord) -> None:
        """Rebuild a claimed job's plan and run it; answers already stored are reused."""
        spec = cpb.EvaluationSpec.FromString(record.spec)
        allowed = set(spec.worker_addresses) or None
        try:
            parsed = self.setup.parse(spec)
            spec = parsed.spec
        except EvalfleetError as exc:
            await self.leases.fail_claimed(record.id, f"could not resume: {exc.message}")
            return
        if allowed:
            self.registry.acquire(allowed)
        try:
            try:
                workers = await self.setup.select(spec, parsed, allowed,
                                                  min(self.worker_wait_s, self.lease_s / 2))
            except EvalfleetError as exc:
                # Workers come and go: a resumed job waits for them rather than failing.
                await self.leases.wait_for_workers(record.id, exc.message)
                if allowed:
                    self.registry.release(allowed)
                return
            plan = await self.setup.plan(spec, parsed, workers)
        except EvalfleetError as exc:
            if allowed:
                self.registry.release(allowed)
            await self.leases.fail_claimed(record.id, f"could not resume: {exc.message}")
            return
        except BaseException:
            if allowed:
                self.registry.release(allowed)
            raise
        if record.id not in self.leases.held:  # the lease was lost while planning
            if allowed:
                self.registry.release(allowed)
            return
        self.leases.retry_at.pop(record.id, None)
        job = Job(id=record.id, parsed=parsed, plan=plan, model_info=workers[0].info,
                  allowed=allowed, state=record.state)
        job.restore_usage(record.progress)  # what its earlier runs spent
        job.created_at.FromNanoseconds(int(record.created_at * 1e9))
        self.execution.start(job)
        job.publish(f"resumed by coordinator {self.owner} (takeover {record.attempts})")
        log.info("job_resumed", job=job.id, owner=self.owner, attempts=record.attempts,
                 unique_requests=len(plan.work), workers=sorted(w.address for w in workers))

    # -- following -----------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"evaluation '{job_id}' not found")
        return job
    async def watch(self, job_id: str) -> AsyncIterator[cpb.EvaluationEvent]:
        """Every event of the job so far, then new ones until it ends (see
        :meth:`JobWatcher.watch`)."""
        async for event in self.watcher.watch(job_id):
            yield event

    async def cancel(self, job_id: str) -> Job | JobRecord:
        """Stop the job: no batch of it is sent once this returns.

        A job this process does not run (another coordinator's, on a shared store, or one
        waiting to be claimed) is marked CANCELLED in the store; its holder stops it at its
        next lease renewal (within ``lease_s / 3``). Returns the job, or its stored record.
        """
        job = self.jobs.get(job_id)
        if job is None or job.lost:
            record = await self.store.cancel_job(job_id, CANCELLED_ELSEWHERE)
            if record is None:
                record = await self.store.get_job(job_id)
            if record is None:
                raise NotFoundError(f"evaluation '{job_id}' not found")
            return record
        self.scheduler.stop(job_id)
        if job.state not in TERMINAL and job.runner is not None:
            job.runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.runner
        return job
