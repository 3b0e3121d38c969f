"""The coordinator's registry and scheduler against simulated workers (real gRPC servers that
answer after scripted delays, hang, fail requests or disappear; no model): fair sharing,
cancel, deadlines, disconnects, requests failing on every try, time-sized batches, worker
selection, self-registration and workers coming back."""

from __future__ import annotations

import sys
import threading
import time

import grpc
import pytest
from conftest import REPO_ROOT

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc
from evalfleet.v1 import inference_pb2 as ipb

sys.path.insert(0, str(REPO_ROOT / "bench"))
from simworker import Script, sim_fingerprint, start_simulated_worker  # noqa: E402

TERMINAL = {cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED,
            cpb.EVALUATION_STATE_CANCELLED}


class Fleet:
    """Simulated workers and a coordinator on loopback, hosted by the background loop."""

    def __init__(self, loop, data_dir) -> None:
        self.loop = loop
        self.data_dir = data_dir
        self.workers: list = []
        self.servers: list = []

    def worker(self, script: Script | None = None, *, port: int = 0,
               model_name: str = "sim-model"):
        server, worker = self.loop.run(start_simulated_worker(
            script or Script(), port=port, model_name=model_name))
        self.workers.append((server, worker))
        return server, worker

    def coordinator(self, workers=(), **scheduler):
        from evalfleet.server.access import AccessPolicy
        from evalfleet.server.scheduler import SchedulerConfig
        from evalfleet.server.service import CoordinatorOptions, start_coordinator

        store = scheduler.pop("store", None)
        options = CoordinatorOptions(
            workers=list(workers), data_dir=self.data_dir, health_interval_s=0.2,
            lease_s=scheduler.pop("lease_s", 15.0),
            job_lease_s=scheduler.pop("job_lease_s", 30.0),
            policy=AccessPolicy(allow_spec_workers=True), worker_wait_s=5.0,
            scheduler=SchedulerConfig(**{"batch_seconds": 0.3, **scheduler}))
        server, runner = self.loop.run(start_coordinator(store=store, options=options))
        self.servers.append(server)
        channel = grpc.insecure_channel(server.address)
        return cpb_grpc.EvaluationServiceStub(channel), runner, server

    def close(self) -> None:
        for server in [*self.servers, *(s for s, _ in self.workers)]:
            self.loop.run(server.stop(0.2))


@pytest.fixture()
def fleet(background_loop, data_dir):
    f = Fleet(background_loop, data_dir)
    yield f
    f.close()


def _spec(limit: int, **kw) -> cpb.EvaluationSpec:
    return cpb.EvaluationSpec(model="sim", tasks=["arc_easy"], limit=limit, bootstrap_iters=0,
                              log_samples=True, **kw)


def _finish(stub, evaluation_id: str, timeout: float = 120) -> cpb.Evaluation:
    for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation_id), timeout=timeout):
        pass
    return stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation_id), timeout=10)


def _samples(stub, evaluation_id: str) -> list[str]:
    return [r.json for r in stub.StreamSamples(cpb.StreamSamplesRequest(id=evaluation_id),
                                               timeout=60)]


def _per_sample(stub, evaluation_id: str) -> list[tuple]:
    import json

    out = []
    for line in _samples(stub, evaluation_id):
        rec = json.loads(line)
        out.append((rec["doc_id"], rec["acc"], rec["acc_norm"], json.dumps(rec["resps"])))
    return out


def test_three_jobs_share_the_workers_smallest_finishes_first(fleet):
    (w1, _), (w2, _) = fleet.worker(Script(item_delay=0.01)), fleet.worker(
        Script(item_delay=0.01))
    stub, runner, _ = fleet.coordinator([w1.address, w2.address])
    finished: dict[str, float] = {}
    state_of_large_when_small_done: list[int] = []
    ids = {}
    threads = []
    for name, limit in (("large", 300), ("medium", 80), ("small", 15)):  # largest first
        ids[name] = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=_spec(limit)),
                                          timeout=60).id

        def follow(name=name):
            final = _finish(stub, ids[name])
            finished[name] = time.monotonic()
            assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
            if name == "small":
                state_of_large_when_small_done.append(stub.GetEvaluation(
                    cpb.GetEvaluationRequest(id=ids["large"])).state)

        threads.append(threading.Thread(target=follow))
        threads[-1].start()
    for t in threads:
        t.join(120)
    assert set(finished) == {"large", "medium", "small"}
    assert finished["small"] < finished["medium"] < finished["large"]
    # The small job did not wait for the large one, which was still computing.
    assert state_of_large_when_small_done == [cpb.EVALUATION_STATE_RUNNING]


def test_cancel_stops_dispatch_and_keeps_answers(fleet):
    (w1, sim), = [fleet.worker(Script(item_delay=0.02))]
    stub, runner, _ = fleet.coordinator([w1.address])
    evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=_spec(200)), timeout=60)
    while not sim.script.batches:
        time.sleep(0.05)
    job = runner.jobs[evaluation.id]
    dispatch, work = job.dispatch, list(job.plan.work)  # a job that ended lets go of them
    cancelled = stub.CancelEvaluation(cpb.CancelEvaluationRequest(id=evaluation.id), timeout=10)
    assert cancelled.state == cpb.EVALUATION_STATE_CANCELLED
    sent = dispatch.batches_sent
    time.sleep(1.5)
    assert dispatch.batches_sent == sent  # nothing sent after CancelEvaluation returned
    assert len(sim.script.batches) == sent
    assert sum(len(ids) for _, ids in sim.script.batches) < len(work)
    # The batches in flight at the cancel still reached the store.
    answered = fleet.loop.run(_count_answers(runner, job, work))
    assert answered == sum(len(ids) for _, ids in sim.script.batches)


async def _count_answers(runner, job, work: list[str]) -> int:
    return len(await runner.store.get_answers(job.model_info.fingerprint, work))


def test_hung_and_vanished_workers_lose_nothing(fleet):
    """One worker hangs past its deadline, another is stopped with batches in flight: every
    batch is answered by the others and the per-sample results equal an undisturbed run's."""
    (good, _), = [fleet.worker(Script(item_delay=0.002))]
    stub, _, _ = fleet.coordinator([good.address])
    reference = _finish(stub, stub.CreateEvaluation(
        cpb.CreateEvaluationRequest(spec=_spec(60)), timeout=60).id)
    assert reference.state == cpb.EVALUATION_STATE_SUCCEEDED, reference.error
    expected = _per_sample(stub, reference.id)

    hung_server, hung = fleet.worker(Script(hang=True))
    gone_server, gone = fleet.worker(Script(item_delay=0.05))
    ok_server, ok = fleet.worker(Script(item_delay=0.005))
    stub, runner, _ = fleet.coordinator(
        [hung_server.address, gone_server.address, ok_server.address],
        min_deadline_s=1.0, first_deadline_s=1.0)
    evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=_spec(60)), timeout=60)
    while not gone.script.batches:
        time.sleep(0.01)
    fleet.loop.run(gone_server.stop(0))  # disconnects with its batch in flight
    final = _finish(stub, evaluation.id)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert all(p.done == p.total > 0 for p in final.progress)  # nothing counted twice
    assert _per_sample(stub, evaluation.id) == expected
    workers = {w.address: w for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers}
    assert workers[hung_server.address].batches_failed >= 1
    assert "DEADLINE_EXCEEDED" in workers[hung_server.address].last_error
    assert workers[gone_server.address].state == cpb.WORKER_STATE_DOWN
    assert workers[ok_server.address].requests_answered == \
        runner.jobs[evaluation.id].unique_requests
    hung.script.hang = False


def _first_request(spec: cpb.EvaluationSpec, data_dir) -> str:
    from evalfleet.server.planning import build_plan
    from evalfleet.server.spec import parse_spec

    plan = build_plan(parse_spec(spec), data_dir, [])
    return plan.tasks[0].request_ids[5]


@pytest.mark.parametrize("retryable", [True, False])
def test_request_failing_on_every_try_fails_the_job_naming_it(fleet, data_dir, retryable):
    spec = _spec(10)
    bad = _first_request(spec, data_dir)
    scripts = [Script(error_ids={bad: ("backend exploded", retryable)}) for _ in range(2)]
    addresses = [fleet.worker(s)[0].address for s in scripts]
    stub, _, _ = fleet.coordinator(addresses)
    final = _finish(stub, stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec),
                                                timeout=60).id)
    assert final.state == cpb.EVALUATION_STATE_FAILED
    assert "task arc_easy doc 1 (loglikelihood #1)" in final.error
    assert "backend exploded" in final.error
    if retryable:
        assert "failed on every try (3 tries)" in final.error
        tries = [rid for s in scripts for _, ids in s.batches for rid in ids if rid == bad]
        assert len(tries) == 3
    else:
        assert "could not answer" in final.error


def test_batches_are_sized_by_time_not_by_batch_items(fleet):
    (server, sim), = [fleet.worker(Script(item_delay=0.01))]
    stub, runner, _ = fleet.coordinator([server.address], batch_seconds=0.2,
                                        max_batch_items=512)
    evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=_spec(100)), timeout=60)
    final = _finish(stub, evaluation.id)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    sizes = [len(ids) for _, ids in sim.script.batches]
    # 0.2 s of a 10 ms-per-request worker is about 20 requests; never near 512, and a prefix
    # group may stretch a batch at most 4 times.
    assert sizes[0] == 16 and max(sizes) <= 4 * 25, sizes
    assert sum(sizes) == runner.jobs[evaluation.id].unique_requests


def test_jobs_choose_workers_by_model(fleet):
    a = fleet.worker(model_name="model-a")[0]
    b = fleet.worker(model_name="model-b")[0]
    stub, _, _ = fleet.coordinator([a.address, b.address])
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=_spec(5)), timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "several models" in err.value.details() and "model_fingerprint" in err.value.details()
    by_name = _finish(stub, stub.CreateEvaluation(cpb.CreateEvaluationRequest(
        spec=_spec(5, model_args="pretrained=model-b")), timeout=60).id)
    assert by_name.state == cpb.EVALUATION_STATE_SUCCEEDED, by_name.error
    by_fp = _finish(stub, stub.CreateEvaluation(cpb.CreateEvaluationRequest(
        spec=_spec(5, model_fingerprint=sim_fingerprint("model-a")[:20])), timeout=60).id)
    assert by_fp.state == cpb.EVALUATION_STATE_SUCCEEDED, by_fp.error
    workers = {w.address: w for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers}
    assert workers[a.address].requests_answered == workers[b.address].requests_answered == 20
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateEvaluation(cpb.CreateEvaluationRequest(
            spec=_spec(5, model_args="pretrained=model-c")), timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no worker serves" in err.value.details() and "model-c" in err.value.details()


def test_spec_naming_a_dead_and_a_live_worker_runs_on_the_live_one(fleet):
    live = fleet.worker()[0]
    stub, _, _ = fleet.coordinator()
    final = _finish(stub, stub.CreateEvaluation(cpb.CreateEvaluationRequest(
        spec=_spec(5, worker_addresses=["127.0.0.1:1", live.address])), timeout=60).id)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateEvaluation(cpb.CreateEvaluationRequest(
            spec=_spec(5, worker_addresses=["127.0.0.1:1"])), timeout=60)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1:1" in err.value.details()


def _wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition never held")


def test_registration_lease_heartbeat_and_expiry(fleet):
    server = fleet.worker()[0]
    stub, _, coordinator = fleet.coordinator(lease_s=1.0)
    with grpc.insecure_channel(coordinator.address) as channel:
        registry = cpb_grpc.WorkerRegistryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            registry.Heartbeat(cpb.HeartbeatRequest(address=server.address), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        reply = registry.RegisterWorker(cpb.RegisterWorkerRequest(address=server.address))
        assert reply.lease_seconds == 1.0 and reply.heartbeat_interval_seconds == pytest.approx(
            1 / 3)
        listed = _wait_for(lambda: [w for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers
                                    if w.state == cpb.WORKER_STATE_READY])
        assert listed[0].source == "registered" and listed[0].backend == "sim"
        assert listed[0].lease_expires_at.seconds > 0
        for _ in range(8):  # heartbeats keep it past its 1 s lease
            registry.Heartbeat(cpb.HeartbeatRequest(address=server.address), timeout=5)
            time.sleep(0.25)
        assert [w.address for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers] == [
            server.address]
        # No heartbeat: the lease runs out and the worker leaves the registry.
        _wait_for(lambda: not stub.ListWorkers(cpb.ListWorkersRequest()).workers, timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            registry.RegisterWorker(cpb.RegisterWorkerRequest(address="no-port"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_failed_worker_comes_back_when_healthy(fleet):
    server = fleet.worker()[0]
    port = server.port
    stub, _, _ = fleet.coordinator([server.address])
    _wait_for(lambda: stub.ListWorkers(cpb.ListWorkersRequest()).workers[0].state
              == cpb.WORKER_STATE_READY)
    fleet.loop.run(server.stop(0))
    down = _wait_for(lambda: [w for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers
                              if w.state == cpb.WORKER_STATE_DOWN])
    assert "UNAVAILABLE" in down[0].last_error
    fleet.worker(port=port)  # the same address, healthy again
    _wait_for(lambda: stub.ListWorkers(cpb.ListWorkersRequest()).workers[0].state
              == cpb.WORKER_STATE_READY)
    final = _finish(stub, stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=_spec(5)),
                                                timeout=60).id)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error


def test_a_worker_registers_itself_and_unregisters_on_stop(fleet):
    """The worker side of self-registration (``serve worker --register``): RegisterWorker,
    heartbeats past the lease, re-registration after the coordinator forgot it, and
    UnregisterWorker when the worker stops."""
    from evalfleet.client.serve import Registration
    from evalfleet.common.security import ClientSecurity

    worker = fleet.worker()[0]
    stub, runner, coordinator = fleet.coordinator(lease_s=0.6)
    registration = Registration(coordinator.address, worker.address, ClientSecurity())
    fleet.loop.run(_start(registration))

    def listed():
        return [w for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers
                if w.state == cpb.WORKER_STATE_READY and w.source == "registered"]

    _wait_for(listed)
    time.sleep(1.5)  # well past the 0.6 s lease: heartbeats keep it
    assert listed()
    fleet.loop.run(_drain(runner.registry, worker.address))  # as a coordinator restart would
    _wait_for(lambda: not stub.ListWorkers(cpb.ListWorkersRequest()).workers)
    _wait_for(listed)  # the heartbeat's NOT_FOUND made it register again
    fleet.loop.run(registration.stop())
    _wait_for(lambda: not stub.ListWorkers(cpb.ListWorkersRequest()).workers, timeout=5)


async def _start(registration) -> None:
    registration.start()


async def _drain(registry, address: str) -> None:
    registry.drain(address, "forgotten")


def test_cancel_through_another_coordinator_of_the_store_stops_the_job(fleet, tmp_path):
    """Cancelling a job that another coordinator of a shared store runs used to answer
    NOT_FOUND. The job is now marked CANCELLED in the store; its holder stops at its next lease
    renewal, sends no further batch, and its watchers see the job end cancelled."""
    from evalfleet.server.store import SqliteJobStore

    (server, sim), = [fleet.worker(Script(item_delay=0.02))]
    path = tmp_path / "shared.db"
    runs, running, _ = fleet.coordinator([server.address], store=SqliteJobStore(path),
                                         job_lease_s=1.5)
    other, _, _ = fleet.coordinator([server.address], store=SqliteJobStore(path))
    job_id = runs.CreateEvaluation(cpb.CreateEvaluationRequest(spec=_spec(100)), timeout=60).id
    events = runs.WatchEvaluation(cpb.WatchEvaluationRequest(id=job_id), timeout=60)
    deadline = time.monotonic() + 30
    while not sim.script.batches:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    cancelled = other.CancelEvaluation(cpb.CancelEvaluationRequest(id=job_id), timeout=10)
    assert cancelled.state == cpb.EVALUATION_STATE_CANCELLED
    assert "another coordinator" in cancelled.error
    last = list(events)[-1]  # the holder's watchers see it end
    assert last.state == cpb.EVALUATION_STATE_CANCELLED and "cancelled" in last.message
    sent = len(sim.script.batches)
    time.sleep(1.0)
    assert len(sim.script.batches) == sent  # nothing sent once the holder noticed
    assert running.jobs[job_id].state == cpb.EVALUATION_STATE_CANCELLED
    for stub in (runs, other):
        shown = stub.GetEvaluation(cpb.GetEvaluationRequest(id=job_id), timeout=10)
        assert shown.state == cpb.EVALUATION_STATE_CANCELLED
    # A job neither coordinator knows is still NOT_FOUND.
    with pytest.raises(grpc.RpcError) as err:
        other.CancelEvaluation(cpb.CancelEvaluationRequest(id="no-such-job"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_simulated_workers_fast_answers_equal_its_parsed_ones():
    """bench_fleet's instant workers answer from the request's bytes (a Numba scan); the
    answers are byte for byte those built from the parsed message, and anything unusual
    (an id that does not start with hex digits) takes the parsed path."""
    import hashlib

    import numpy as np
    from simworker import _scores_entry, _scores_from_raw

    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(200)] + ["ABCDEF12-x"]
    request = ipb.LoglikelihoodRequest(items=[
        ipb.LoglikelihoodItem(request_id=rid, context="" if k % 3 else "ctx " * k,
                              continuation=" c", same_context=bool(k % 3))
        for k, rid in enumerate(ids)]).SerializeToString()
    answers, ok = _scores_from_raw(np.frombuffer(request, dtype=np.uint8))
    assert ok and answers.tobytes() == b"".join(_scores_entry(rid) for rid in ids)
    odd = ipb.LoglikelihoodRequest(items=[ipb.LoglikelihoodItem(request_id="not-hex-id")])
    assert not _scores_from_raw(np.frombuffer(odd.SerializeToString(), dtype=np.uint8))[1]

