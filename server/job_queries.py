"""The read side of a coordinator's jobs: evaluations (from memory when this process runs them,
from the store otherwise), their results and samples, and gates on stored runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from evalfleet.common.errors import FailedPreconditionError, NotFoundError
from evalfleet.common.redact import redact_spec
from evalfleet.server.gate_service import evaluate_stored_gate
from evalfleet.server.job import Job
from evalfleet.server.store import JobRecord, JobStore
from evalfleet.server.store.base import decode_progress
from evalfleet.v1 import coordinator_pb2 as cpb


class JobQueries:
    """Answers what clients ask about jobs, without changing any."""

    def __init__(self, store: JobStore, jobs: dict[str, Job]) -> None:
        self.store = store
        self.jobs = jobs

    def _live(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and not job.lost else None

    async def evaluation(self, job_id: str) -> cpb.Evaluation:
        """The job as this process runs it, or as the store has it; NOT_FOUND otherwise."""
        job = self._live(job_id)
        if job is not None:
            return job.to_proto()
        record = await self.store.get_job(job_id)
        if record is None:
            raise NotFoundError(f"evaluation '{job_id}' not found")
        return stored_evaluation(record)

    async def list_evaluations(self, limit: int) -> list[cpb.Evaluation]:
        """The store's newest ``limit`` jobs, live ones as this process runs them."""
        records = await self.store.list_jobs(limit)
        return [job.to_proto() if (job := self._live(r.id)) is not None
                else stored_evaluation(r) for r in records]

    async def results(self, job_id: str) -> cpb.EvaluationResults:
        """A succeeded job's results; FAILED_PRECONDITION naming its state otherwise."""
        record = await self.store.get_job(job_id)
        if record is None:
            raise NotFoundError(f"evaluation '{job_id}' not found")
        if record.state != cpb.EVALUATION_STATE_SUCCEEDED or record.results is None:
            state = cpb.EvaluationState.Name(record.state)
            detail = f": {record.error}" if record.error else ""
            raise FailedPreconditionError(
                f"evaluation '{job_id}' has no results (state {state}{detail})")
        return cpb.EvaluationResults.FromString(record.results)

    async def samples(self, job_id: str, tasks: Sequence[str]
                      ) -> AsyncIterator[cpb.SampleRecord]:
        """A succeeded job's samples records (of ``tasks``, or all)."""
        record = await self.store.get_job(job_id)
        if record is None:
            raise NotFoundError(f"evaluation '{job_id}' not found")
        if record.state != cpb.EVALUATION_STATE_SUCCEEDED:
            raise FailedPreconditionError(f"evaluation '{job_id}' has not succeeded")
        async for task, record_json in self.store.iter_samples(job_id, tasks):
            yield cpb.SampleRecord(task=task, json=record_json)

    async def gate(self, request: cpb.EvaluateGateRequest) -> cpb.EvaluateGateResponse:
        """A gate evaluated on stored runs."""
        return await evaluate_stored_gate(self.store, request)


def stored_evaluation(record: JobRecord) -> cpb.Evaluation:
    """An evaluation as the store has it (this process does not run it): its progress is
    what its coordinator stored at its last lease renewal or when it ended (none for a record
    stored without); a spec stored before secrets were hidden at creation is answered with
    them hidden. Its times are the store's (a finished job this process no longer keeps is
    answered so)."""
    evaluation = decode_progress(record.progress)
    evaluation.MergeFrom(cpb.Evaluation(
        id=record.id, state=record.state,
        spec=redact_spec(cpb.EvaluationSpec.FromString(record.spec)), error=record.error))
    evaluation.created_at.FromNanoseconds(int(record.created_at * 1e9))
    evaluation.updated_at.FromNanoseconds(int(record.updated_at * 1e9))
    return evaluation
