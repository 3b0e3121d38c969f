"""Progress that survives a coordinator restart (issue 24).

A coordinator stores each running job's per-task progress with every lease renewal and when
the job ends. A coordinator that does not run the job (one restarted on the same store, before
the dead one's lease runs out) answers ``GetEvaluation``, ``ListEvaluations`` and
``WatchEvaluation``'s first event with that stored progress instead of none. Before: progress 0
for up to a lease (34 s measured) although 67% was stored.
"""

from __future__ import annotations

import sys
import time

import grpc
from conftest import REPO_ROOT
from test_coordinator_crash import LEASE_S, Coordinator

from evalfleet.server.store import JobRecord, SqliteJobStore
from evalfleet.server.store.base import decode_progress, encode_progress
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

sys.path.insert(0, str(REPO_ROOT / "bench"))
from simworker import Script, start_simulated_worker  # noqa: E402

SPEC = cpb.EvaluationSpec(model="sim", tasks=["arc_easy"], limit=40, batch_size="8",
                          bootstrap_iters=0)


def _wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


def _counts(progress) -> tuple[int, int]:
    return sum(p.done for p in progress), sum(p.total for p in progress)


def test_a_restarted_coordinator_answers_the_stored_progress_then_resumes(
        background_loop, data_dir, tmp_path):
    script = Script(item_delay=0.02)  # slow enough for a lease renewal mid-job
    worker, _ = background_loop.run(start_simulated_worker(script))
    path = tmp_path / "jobs.db"
    probe = SqliteJobStore(path)  # the test's own view of the store
    # The first coordinator is a real process (job lease LEASE_S, renewed every third).
    first = Coordinator(str(path), [worker.address], tmp_path / "first.log").start()
    server = None
    try:
        with grpc.insecure_channel(first.address) as channel:
            job_id = cpb_grpc.EvaluationServiceStub(channel).CreateEvaluation(
                cpb.CreateEvaluationRequest(spec=SPEC), timeout=60).id

        def renewed_mid_job() -> JobRecord | None:
            record = background_loop.run(probe.get_job(job_id))
            done, total = _counts(decode_progress(record.progress).progress)
            return record if 0 < done < total else None

        _wait_for("a lease renewal with progress", renewed_mid_job)
        first.kill9()  # dies mid-job: its lease is not released
        script.item_delay = 0.0  # the rest of the job need not be slow
        dead = background_loop.run(probe.get_job(job_id))
        stored = decode_progress(dead.progress)
        done, total = _counts(stored.progress)
        assert dead.state == cpb.EVALUATION_STATE_RUNNING and dead.owner
        assert 0 < done < total and stored.unique_requests == total

        from evalfleet.server.service import CoordinatorOptions, start_coordinator

        server, runner = background_loop.run(start_coordinator(
            store=SqliteJobStore(path), options=CoordinatorOptions(
                workers=[worker.address], data_dir=data_dir, health_interval_s=0.3,
                job_lease_s=LEASE_S, claim_interval_s=0.2)))
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            shown = stub.GetEvaluation(cpb.GetEvaluationRequest(id=job_id), timeout=10)
            [listed] = stub.ListEvaluations(cpb.ListEvaluationsRequest(), timeout=10).evaluations
            watch = stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=job_id), timeout=60)
            first_event = next(watch)
            watch.cancel()
            # All three were answered from the store, before the dead one's lease ran out.
            still = background_loop.run(probe.get_job(job_id))
            assert still.owner == dead.owner and time.time() < still.lease_until
            assert list(shown.progress) == list(stored.progress)
            assert list(listed.progress) == list(stored.progress)
            assert list(first_event.progress) == list(stored.progress)
            assert shown.unique_requests == listed.unique_requests == total
            assert shown.state == cpb.EVALUATION_STATE_RUNNING

            # The lease runs out: this coordinator takes the job over and finishes it.
            final = _wait_for("the job to finish on the second coordinator", lambda: (
                e := stub.GetEvaluation(cpb.GetEvaluationRequest(id=job_id), timeout=10)
            ).state == cpb.EVALUATION_STATE_SUCCEEDED and e, timeout=90)
        assert _counts(final.progress) == (total, total)
        ended = background_loop.run(probe.get_job(job_id))
        assert (ended.owner, ended.attempts) == (runner.owner, dead.attempts + 1)  # taken over
        # The final progress is stored when the job ends.
        assert _counts(decode_progress(ended.progress).progress) == (total, total)
    finally:
        first.stop()
        if server is not None:
            background_loop.run(server.stop(0.2))
        background_loop.run(worker.stop(0.2))
        background_loop.run(probe.close())


def test_a_stored_record_answers_its_progress_or_none_as_before():
    """``_stored_evaluation``: a record with progress answers it (and its distinct requests);
    one stored before progress was kept answers none; the spec's secrets stay hidden."""
    from evalfleet.server.job_queries import stored_evaluation as _stored_evaluation

    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], model_args="api_key=sk-x")
    progress = [cpb.TaskProgress(task="arc_easy", done=3, total=8, docs_total=2, docs_done=0)]
    old = JobRecord("old", spec.SerializeToString(), cpb.EVALUATION_STATE_RUNNING, "", 1.0,
                    2.0, owner="dead")
    answered = _stored_evaluation(old)
    assert (answered.id, answered.state, list(answered.progress)) == (
        "old", cpb.EVALUATION_STATE_RUNNING, [])
    old.progress = encode_progress(progress, 7)
    answered = _stored_evaluation(old)
    assert list(answered.progress) == progress and answered.unique_requests == 7
    assert answered.id == "old" and "sk-x" not in answered.spec.model_args
    assert answered.updated_at.ToNanoseconds() == 2_000_000_000
