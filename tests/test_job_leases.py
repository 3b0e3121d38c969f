"""The coordinator's job leases (``server/runner.py``) with a real tiny worker and real stores:
a claimed job waits for workers instead of failing, a job whose lease another coordinator took is
stopped without writing, and a graceful stop hands unfinished jobs back to be claimed."""

from __future__ import annotations

import asyncio
import time

import grpc

from evalfleet.server.store import ACTIVE_STATES, JobRecord, SqliteJobStore
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

SPEC = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=20, bootstrap_iters=0)


def _start(background_loop, store, data_dir, workers, **options):
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    opts = CoordinatorOptions(workers=workers, data_dir=data_dir, health_interval_s=0.3,
                              worker_wait_s=0.5, **options)
    return background_loop.run(start_coordinator(store=store, options=opts))


def _wait_for(background_loop, store, job_id, predicate, timeout=120.0) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = background_loop.run(store.get_job(job_id))
        if predicate(record):
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.1)


def test_a_claimed_job_waits_for_workers_instead_of_failing(background_loop, tiny_worker,
                                                             data_dir, tmp_path):
    """The measured bug: a restarted coordinator failed a resumed job ("could not resume:
    worker ... is unreachable") when its worker was down. It now waits, QUEUED, saying so."""
    import socket

    with socket.socket() as s:  # an address where no worker listens
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    store = SqliteJobStore(tmp_path / "jobs.db")
    now = time.time()
    background_loop.run(store.put_job(JobRecord(
        "orphan", SPEC.SerializeToString(), cpb.EVALUATION_STATE_RUNNING, "", now, now,
        owner="dead-coordinator", lease_until=now - 1)))
    server, runner = _start(background_loop, store, data_dir, [dead], job_lease_s=2.0,
                            claim_interval_s=0.3)
    try:
        waiting = _wait_for(background_loop, store, "orphan",
                            lambda r: r.error.startswith("waiting for workers"))
        assert waiting.state == cpb.EVALUATION_STATE_QUEUED
        assert waiting.owner == ""  # handed back: any coordinator with workers may take it
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            shown = stub.GetEvaluation(cpb.GetEvaluationRequest(id="orphan"), timeout=10)
            assert shown.error.startswith("waiting for workers")
            # A worker joins (as one registering itself would): the job resumes and finishes,
            # and the watcher that started while it waited follows it to the end.
            events = stub.WatchEvaluation(cpb.WatchEvaluationRequest(id="orphan"), timeout=120)
            first = next(events)
            assert first.state == cpb.EVALUATION_STATE_QUEUED
            assert first.message.startswith("waiting for workers")

            async def join() -> None:
                runner.registry.add_static([tiny_worker.address])

            background_loop.run(join())
            rest = list(events)
        assert rest[-1].state == cpb.EVALUATION_STATE_SUCCEEDED
        assert any(e.message.startswith("0 answers from the store") for e in rest)
    finally:
        background_loop.run(server.stop(0.5))
    record = background_loop.run(store.get_job("orphan"))
    assert record.state == cpb.EVALUATION_STATE_SUCCEEDED and record.results is not None
    background_loop.run(store.close())


def test_a_job_whose_lease_was_taken_stops_without_writing(background_loop, tiny_worker,
                                                           data_dir, tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.db")
    server, runner = _start(background_loop, store, data_dir, [tiny_worker.address],
                            job_lease_s=1.0)
    try:
        job = background_loop.run(runner.create(cpb.EvaluationSpec.FromString(
            SPEC.SerializeToString())))
        # Another coordinator claims it (as if this one had overslept its lease).
        stolen = background_loop.run(store.claim_job(job.id, "other-coordinator", 600,
                                                     now=time.time() + 1000))
        assert stolen is not None

        async def ended() -> None:
            await asyncio.wait_for(asyncio.gather(job.runner, return_exceptions=True), 120)

        background_loop.run(ended())
        assert job.lost
        assert job.id not in runner.held
    finally:
        background_loop.run(server.stop(0.5))
    record = background_loop.run(store.get_job(job.id))
    assert record.owner == "other-coordinator"
    assert record.state in ACTIVE_STATES and record.results is None  # nothing written by us
    background_loop.run(store.close())


def test_a_graceful_stop_hands_jobs_back(background_loop, tiny_worker, data_dir, tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.db")
    server, runner = _start(background_loop, store, data_dir, [tiny_worker.address])
    spec = cpb.EvaluationSpec.FromString(SPEC.SerializeToString())
    spec.limit = 60  # long enough to be running when the coordinator stops
    job = background_loop.run(runner.create(spec))
    background_loop.run(server.stop(0.5))
    record = background_loop.run(store.get_job(job.id))
    assert record.state in ACTIVE_STATES and record.owner == ""  # released, not CANCELLED
    # Any coordinator on the store takes it over at once (no lease to wait out).
    store2 = SqliteJobStore(tmp_path / "jobs.db")
    server2, _ = _start(background_loop, store2, data_dir, [tiny_worker.address],
                        claim_interval_s=0.3)
    try:
        done = _wait_for(background_loop, store2, job.id,
                         lambda r: r.state == cpb.EVALUATION_STATE_SUCCEEDED)
    finally:
        background_loop.run(server2.stop(0.5))
    assert done.attempts == 1 and done.results is not None
    background_loop.run(store.close())
    background_loop.run(store2.close())
