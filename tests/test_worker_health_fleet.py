"""Acceptance (issue 24), on real workers of the tiny model: an ``evalfleet serve worker``
process and an in-process worker behind one coordinator.

- A tenant whose generation requests fail on the workers (``top_k=-1`` with sampling: accepted
  at creation, and the hf backend raises for it, as lm-eval's does) fails alone: both workers
  stay READY and another tenant's concurrent job finishes with the results of a clean run.
- A worker SIGSTOPped while it holds a batch delays its job only until its health check
  says it is DOWN: the batch goes to the other worker then, not at its deadline.
"""

from __future__ import annotations

import json
import os
import signal
import time

import grpc
import pytest
from test_fleet_worker_kill import running_workers

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

HEALTH_INTERVAL_S = 0.5


@pytest.fixture(scope="module")
def process_worker(tiny_model_dir, tmp_path_factory):
    """One ``evalfleet serve worker`` process (tiny model): (address, process)."""
    with running_workers(tiny_model_dir, tmp_path_factory.mktemp("worker"), n=1) as (
            addresses, procs):
        yield addresses[0], procs[0]


def _coordinator(background_loop, data_dir, workers, **scheduler):
    from evalfleet.server.scheduler import SchedulerConfig
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    options = CoordinatorOptions(workers=workers, data_dir=data_dir,
                                 health_interval_s=HEALTH_INTERVAL_S,
                                 scheduler=SchedulerConfig(**scheduler))
    return background_loop.run(start_coordinator(options=options))


def _wait_ready(stub, n: int) -> dict[str, cpb.WorkerStatus]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = {w.address: w for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers}
        if sum(w.state == cpb.WORKER_STATE_READY for w in workers.values()) == n:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"workers never all READY: {workers}")


def _finish(stub, evaluation_id: str) -> cpb.Evaluation:
    for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation_id), timeout=300):
        pass
    return stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation_id), timeout=10)


def _samples(stub, evaluation_id: str) -> list[tuple]:
    out = []
    for record in stub.StreamSamples(cpb.StreamSamplesRequest(id=evaluation_id), timeout=60):
        rec = json.loads(record.json)
        out.append((rec["doc_id"], rec["acc"], rec["acc_norm"],
                    [(round(float(r[0]), 3), r[1]) for r in rec["filtered_resps"]]))
    return sorted(out)


OTHER_TENANT = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=8, bootstrap_iters=0,
                                  log_samples=True)


def test_one_tenants_failing_requests_leave_the_workers_ready_for_another(
        background_loop, data_dir, tiny_worker, process_worker):
    addresses = [process_worker[0], tiny_worker.address]
    server, _ = _coordinator(background_loop, data_dir, addresses, initial_batch_items=4)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            _wait_ready(stub, 2)
            started = time.time()
            bad = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                model="hf", tasks=["gsm8k"], limit=2, bootstrap_iters=0,
                gen_kwargs="top_k=-1,do_sample=true,temperature=1,max_gen_toks=4")), timeout=60)
            good = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=OTHER_TENANT),
                                         timeout=60)
            failed, succeeded = _finish(stub, bad.id), _finish(stub, good.id)
            samples = _samples(stub, good.id)
            workers = {w.address: w for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers}
    finally:
        background_loop.run(server.stop(0.5))
    assert failed.state == cpb.EVALUATION_STATE_FAILED
    assert "task gsm8k doc" in failed.error and "failed on every try (3 tries)" in failed.error
    assert "top_k" in failed.error
    assert succeeded.state == cpb.EVALUATION_STATE_SUCCEEDED, succeeded.error
    for worker in workers.values():  # READY all along: no flapping, no failed batch
        assert worker.state == cpb.WORKER_STATE_READY
        assert worker.state_since.ToNanoseconds() / 1e9 < started
        assert worker.batches_failed == 0, worker.last_error

    # The other tenant's results equal a clean run's (a fresh coordinator: nothing stored).
    server, _ = _coordinator(background_loop, data_dir, addresses)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            _wait_ready(stub, 2)
            clean = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=OTHER_TENANT),
                                          timeout=60)
            assert _finish(stub, clean.id).state == cpb.EVALUATION_STATE_SUCCEEDED
            assert _samples(stub, clean.id) == samples
    finally:
        background_loop.run(server.stop(0.5))


def test_a_stopped_worker_holding_a_batch_delays_its_job_only_until_it_is_down(
        background_loop, data_dir, tiny_worker, process_worker):
    victim, proc = process_worker
    # Deadlines far beyond the test: only the DOWN state can send the batch elsewhere in time.
    server, runner = _coordinator(background_loop, data_dir, [victim, tiny_worker.address],
                                  batch_seconds=0.5, initial_batch_items=4,
                                  min_deadline_s=120.0, first_deadline_s=600.0)
    stopped_at = None
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            _wait_ready(stub, 2)
            evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(
                spec=cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=60,
                                        bootstrap_iters=0)), timeout=60)
            worker = runner.registry.workers[victim]
            deadline = time.monotonic() + 60
            while stopped_at is None and time.monotonic() < deadline:
                if worker.in_flight and worker.batches_done:  # a sized batch, past the probe
                    os.kill(proc.pid, signal.SIGSTOP)
                    time.sleep(0.2)
                    if worker.in_flight:  # it holds the batch (not answered before the stop)
                        stopped_at = time.monotonic()
                    else:
                        os.kill(proc.pid, signal.SIGCONT)
                time.sleep(0.002)
            assert stopped_at is not None, "the worker never held a batch to stop it with"
            final = _finish(stub, evaluation.id)
            took = time.monotonic() - stopped_at
            down = {w.address: w for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers}
    finally:
        if stopped_at is not None:
            os.kill(proc.pid, signal.SIGCONT)
        background_loop.run(server.stop(0.5))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert all(p.done == p.total > 0 for p in final.progress)  # nothing lost, nothing twice
    assert down[victim].state == cpb.WORKER_STATE_DOWN
    # DOWN after at most an interval and a health check's timeout; then the requeued batch
    # (about batch_seconds of work) and the rest, with room for a loaded machine. The batch's
    # deadline (120 s) or the channel's keepalive (60 s) would take far longer.
    limit = HEALTH_INTERVAL_S + runner.registry.health_timeout_s + 8.0
    assert took < limit, f"finished {took:.1f} s after the stop (limit {limit:.1f} s)"
