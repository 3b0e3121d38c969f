"""Executing a job: its states written under its lease, its missing answers computed, then
finished; a job whose run ended is retired (the newest ``keep_finished`` stay in memory)."""

from __future__ import annotations

import asyncio
import time

from evalfleet.common.errors import EvalfleetError
from evalfleet.common.logging import get_logger
from evalfleet.server.dispatch import compute_missing
from evalfleet.server.job import TERMINAL, Job
from evalfleet.server.job_finishing import JobFinisher
from evalfleet.server.job_leases import LeaseKeeper
from evalfleet.server.registry import WorkerRegistry
from evalfleet.server.scheduler import Scheduler
from evalfleet.server.store import ACTIVE_STATES, JobStore
from evalfleet.v1 import coordinator_pb2 as cpb

log = get_logger("jobs")


class JobExecution:
    """Runs a planned job to its end state."""

    def __init__(self, store: JobStore, registry: WorkerRegistry, scheduler: Scheduler,
                 leases: LeaseKeeper, finisher: JobFinisher, jobs: dict[str, Job], *,
                 keep_finished: int) -> None:
        self.store = store
        self.registry = registry
        self.scheduler = scheduler
        self.leases = leases
        self.finisher = finisher
        self.jobs = jobs
        self.owner = leases.owner
        self.keep_finished = keep_finished
        self._finished: dict[str, Job] = {}  # retired jobs still in ``jobs``, oldest first

    def start(self, job: Job) -> None:
        """Hold the job and run it in the background; its usage is stored as it is counted."""
        self._finished.pop(job.id, None)  # an earlier run of it, lost, then claimed again
        self.jobs[job.id] = job
        self.leases.held.add(job.id)
        job.usage.on_change = lambda: self.leases.checkpoint(job.id)
        job.runner = asyncio.create_task(self.run(job), name=f"job-{job.id}")

    async def set_state(self, job: Job, state: int, message: str, error: str = "") -> bool:
        """Compare-and-set the job's state in the store; False (and the job stopped) when this
        runner no longer holds it."""
        if job.lost:
            return False
        final = job.stored_progress() if state in TERMINAL else None
        if await self.store.transition(job.id, self.owner, ACTIVE_STATES, state,
                                       error=error, progress=final) is None:
            log.warning("job_state_refused", job=job.id, state=state, owner=self.owner)
            job.lost = True
            self.leases.held.discard(job.id)
            job.publish("refused by the store: another coordinator holds this job")
            return False
        job.state = state
        job.error = error
        if state in TERMINAL:
            self.leases.held.discard(job.id)
            self.scheduler.metrics.job_ended(cpb.EvaluationState.Name(state))
        log.info("job_state", job=job.id, state=cpb.EvaluationState.Name(state),
                 owner=self.owner)
        job.publish(message)
        return True

    async def run(self, job: Job) -> None:
        """Compute the job's missing answers, finish it, and write its end state."""
        started = time.time()
        try:
            if not await self.set_state(job, cpb.EVALUATION_STATE_RUNNING, "running"):
                return
            await compute_missing(job, self.store, self.scheduler)
            await self.finisher.finish(job, started)
            await self.set_state(job, cpb.EVALUATION_STATE_SUCCEEDED, "succeeded")
        except asyncio.CancelledError:
            if job.lost:
                log.info("job_stopped", job=job.id, owner=self.owner,
                         reason="lease lost or handed back")
            else:
                await self.set_state(job, cpb.EVALUATION_STATE_CANCELLED, "cancelled")
        except EvalfleetError as exc:
            log.warning("job_failed", job=job.id, error=exc.message)
            await self.set_state(job, cpb.EVALUATION_STATE_FAILED, "failed", exc.message)
        except Exception as exc:  # noqa: BLE001 - recorded on the job
            log.exception("job_crashed", job=job.id)
            await self.set_state(job, cpb.EVALUATION_STATE_FAILED, "failed",
                                 f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if job.allowed:
                self.registry.release(job.allowed)
            self.retire(job)

    def retire(self, job: Job) -> None:
        """A job whose run ended keeps only what ``GetEvaluation`` and watchers need (its
        plan, documents and dispatch are let go); the newest ``keep_finished`` such jobs stay
        in memory, older ones are forgotten here and answered from the store."""
        job.retire()
        if self.jobs.get(job.id) is not job:
            return  # a newer run of it (claimed again) took its place
        self._finished.pop(job.id, None)
        self._finished[job.id] = job
        while len(self._finished) > self.keep_finished:
            old_id = next(iter(self._finished))
            old = self._finished.pop(old_id)
            if self.jobs.get(old_id) is old:
                del self.jobs[old_id]
