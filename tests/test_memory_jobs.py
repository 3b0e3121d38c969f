"""A long-running coordinator's memory stays flat: a finished job lets go of its plan (tasks,
documents, requests) and dispatch, at most ``keep_finished`` finished jobs stay in memory, a
slow watcher's queue is bounded, and every finished job is still answered from the store."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref
from types import SimpleNamespace

import grpc
import pytest

from evalfleet.server.job import MAX_QUEUED_EVENTS, RETIRED_HISTORY, Job
from evalfleet.server.planning import JobPlan, TaskPlan
from evalfleet.server.spec import parse_spec
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc
from evalfleet.v1 import inference_pb2 as ipb

SPEC = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=3, log_samples=True,
                          bootstrap_iters=0)


@pytest.fixture()
def soak_coordinator(background_loop, tiny_worker, data_dir, tmp_path):
    """A coordinator of its own (its runner inspected) on the session's tiny worker, keeping
    one finished job in memory; every plan it builds is watched through a weak reference."""
    from evalfleet.server.service import start_coordinator
    from evalfleet.server.store import SqliteJobStore

    server, runner = background_loop.run(start_coordinator(
        workers=[tiny_worker.address], store=SqliteJobStore(tmp_path / "jobs.db"),
        data_dir=data_dir))
    runner.execution.keep_finished = 1
    plans: list[weakref.ref] = []
    plan = runner.setup.plan

    async def recording_plan(*args, **kwargs):
        built = await plan(*args, **kwargs)
        plans.append(weakref.ref(built))
        return built

    runner.setup.plan = recording_plan
    yield server, runner, plans
    background_loop.run(server.stop(0.5))


def _run(stub, spec: cpb.EvaluationSpec) -> str:
    job_id = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=120).id
    events = list(stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=job_id), timeout=120))
    assert events[-1].state == cpb.EVALUATION_STATE_SUCCEEDED, events[-1].message
    return job_id


def test_finished_jobs_keep_no_plan_and_are_answered_from_the_store(soak_coordinator):
    server, runner, plans = soak_coordinator
    with grpc.insecure_channel(server.address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        ids = [_run(stub, SPEC) for _ in range(3)]
        gc.collect()
        # No finished job's plan (its tasks, their documents and requests) is alive anywhere.
        assert len(plans) == 3 and [ref() for ref in plans] == [None] * 3
        # Only the newest finished job stays in memory, retired.
        assert list(runner.jobs) == ids[-1:]
        for job in runner.jobs.values():
            assert job.plan is None and job.dispatch is None
            assert len(job.history) <= RETIRED_HISTORY
        for job_id in ids:  # kept or forgotten, every read still answers
            shown = stub.GetEvaluation(cpb.GetEvaluationRequest(id=job_id), timeout=10)
            assert shown.state == cpb.EVALUATION_STATE_SUCCEEDED and shown.spec.tasks == \
                ["arc_easy"]
            assert 0 < shown.created_at.ToNanoseconds() <= shown.updated_at.ToNanoseconds()
            results = json.loads(stub.GetResults(cpb.GetResultsRequest(id=job_id),
                                                 timeout=10).results_json)
            assert results["n-samples"]["arc_easy"]["effective"] == 3
            samples = list(stub.StreamSamples(cpb.StreamSamplesRequest(id=job_id), timeout=10))
            assert len(samples) == 3
            events = list(stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=job_id),
                                               timeout=10))
            assert events[-1].state == cpb.EVALUATION_STATE_SUCCEEDED
        kept = stub.GetEvaluation(cpb.GetEvaluationRequest(id=ids[-1]), timeout=10)
        assert kept.unique_requests == 12  # 3 documents x 4 choices
        assert [(p.task, p.done, p.total, p.docs_done) for p in kept.progress] == \
            [("arc_easy", 12, 12, 3)]
        listed = stub.ListEvaluations(cpb.ListEvaluationsRequest(limit=10), timeout=10)
        assert {e.id for e in listed.evaluations} >= set(ids)


def _job_with_plan() -> Job:
    """A job whose plan is two fake tasks: 4 of 6 answers done."""
    tasks = [TaskPlan(SimpleNamespace(name=name), docs=[(i, {}) for i in range(3)],
                      requests=[], request_ids=[], answer_ids=[f"{name}{i}" for i in range(3)],
                      original_size=3) for name in ("a", "b")]
    plan = JobPlan(tasks, [], ["a", "b"], {f"{n}{i}": None for n in "ab" for i in range(3)})
    return Job(id="j", parsed=parse_spec(cpb.EvaluationSpec(model="hf", tasks=["a", "b"])),
               plan=plan, model_info=ipb.ModelInfo(), done={"a": 3, "b": 1})


def test_retired_job_answers_as_before_with_its_first_and_latest_events():
    job = _job_with_plan()
    for i in range(2 * RETIRED_HISTORY):
        job.publish(f"event {i}")
    job.state = cpb.EVALUATION_STATE_SUCCEEDED
    job.publish("succeeded")
    messages = [e.message for e in job.history]
    before = job.to_proto()
    job.retire()
    assert job.plan is None and job.unique_requests == 6
    assert job.to_proto() == before
    assert [e.message for e in job.history] == \
        [messages[0], *messages[-(RETIRED_HISTORY - 1):]]
    assert job.history[-1].message == "succeeded"
    job.publish("late note")  # a retired job can still tell its watchers something
    assert list(job.history[-1].progress) == list(before.progress)


def test_a_retired_job_lets_go_of_its_provider_batch_answer_index():
    """The answer id -> task index a batch_api job builds (one entry per request) is dropped
    when the job retires; its usage stays as counted."""
    from evalfleet.server.dispatch import task_owners
    from evalfleet.server.usage import UsageCounts

    job = _job_with_plan()
    job.usage._first = task_owners(job)[0]  # as count_provider_batch builds it
    job.usage.tasks["a"] = UsageCounts(requests=3, prompt_tokens=30)
    assert len(job.usage._first) == 6
    job.retire()
    assert job.usage._first is None
    assert job.usage.total() == UsageCounts(requests=3, prompt_tokens=30)


def test_a_watcher_that_does_not_read_holds_a_bounded_queue():
    job = _job_with_plan()
    queue: asyncio.Queue = asyncio.Queue()
    job.subscribers.append(queue)
    for i in range(3 * MAX_QUEUED_EVENTS):
        job.publish(f"event {i}")
    assert queue.qsize() == MAX_QUEUED_EVENTS
    waiting = [queue.get_nowait().message for _ in range(MAX_QUEUED_EVENTS)]
    assert waiting[-1] == f"event {3 * MAX_QUEUED_EVENTS - 1}"  # the newest are kept


def test_retry_times_of_jobs_no_longer_waiting_are_forgotten():
    from evalfleet.server.registry import WorkerRegistry
    from evalfleet.server.runner import JobRunner
    from evalfleet.server.scheduler import Scheduler
    from evalfleet.server.store import SqliteJobStore

    async def retry_times_left() -> list[str]:
        store = SqliteJobStore(":memory:")
        await store.open()
        registry = WorkerRegistry()
        runner = JobRunner(store, registry, Scheduler(registry))
        now = time.monotonic()
        runner.leases.retry_at.update({"taken elsewhere": now - 1, "waiting": now + 60})
        try:
            await runner.claim_once()
            return list(runner.leases.retry_at)
        finally:
            await store.close()

    assert asyncio.run(retry_times_left()) == ["waiting"]
