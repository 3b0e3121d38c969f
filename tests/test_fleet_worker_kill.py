"""Acceptance: three real ``evalfleet serve worker`` processes (tiny model) behind one
coordinator; ``kill -9`` one of them while it has batches in flight, and the job still finishes
with per-sample results identical to an undisturbed run (metrics exactly; log-likelihoods within
float32 noise), every request counted once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import grpc
import pytest
from test_cli import ENV, EVALFLEET, _free_port, _wait_serving

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc


@contextlib.contextmanager
def running_workers(model_dir, log_dir, n: int = 3):
    """``n`` real ``evalfleet serve worker`` processes (tiny model) on loopback; yields their
    addresses and processes, and stops those still alive at the end."""
    ports = [_free_port() for _ in range(n)]
    logs = [open(log_dir / f"worker{i}.log", "w") for i in range(n)]  # noqa: SIM115
    procs = [subprocess.Popen(
        [*EVALFLEET, "serve", "worker", "--backend", "hf", "--model_args",
         f"pretrained={model_dir},dtype=float32", "--batch_size", "8", "--port", str(p)],
        env={**ENV, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=log, text=True)
        for p, log in zip(ports, logs, strict=True)]
    try:
        for port, proc in zip(ports, procs, strict=True):
            _wait_serving(f"127.0.0.1:{port}", proc, timeout=600)
        yield [f"127.0.0.1:{p}" for p in ports], procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for log in logs:
            log.close()


@pytest.fixture()
def three_workers(tiny_model_dir, tmp_path):
    with running_workers(tiny_model_dir, tmp_path) as workers:
        yield workers


SPEC = cpb.EvaluationSpec(model="hf", tasks=["arc_easy", "piqa"], limit=12,
                          bootstrap_iters=0, log_samples=True)


def _coordinator(background_loop, data_dir, workers):
    from evalfleet.server.scheduler import SchedulerConfig
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    options = CoordinatorOptions(workers=workers, data_dir=data_dir, health_interval_s=0.5,
                                 scheduler=SchedulerConfig(batch_seconds=0.5,
                                                           initial_batch_items=4))
    return background_loop.run(start_coordinator(options=options))


def _samples(stub, evaluation_id: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in stub.StreamSamples(cpb.StreamSamplesRequest(id=evaluation_id), timeout=60):
        rec = json.loads(record.json)
        out.setdefault(record.task, []).append(
            {k: rec[k] for k in ("doc_id", "resps", "filtered_resps", "acc", "acc_norm")})
    return out


def _run(stub, spec, during=None) -> tuple[cpb.Evaluation, dict]:
    evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=120)
    if during is not None:
        during(evaluation.id)
    for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id), timeout=600):
        pass
    final = stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id), timeout=10)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    return final, _samples(stub, evaluation.id)


def test_kill_9_a_worker_mid_job(background_loop, data_dir, three_workers):
    addresses, procs = three_workers
    server, _ = _coordinator(background_loop, data_dir, addresses)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            _, undisturbed = _run(stub, SPEC)
    finally:
        background_loop.run(server.stop(0.5))

    # A fresh coordinator (empty store): every answer is computed again, and one worker dies.
    server, runner = _coordinator(background_loop, data_dir, addresses)
    killed: list[str] = []

    def kill_a_busy_worker(evaluation_id: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = runner.jobs[evaluation_id]
            done = sum(job.done.values())
            workers = stub.ListWorkers(cpb.ListWorkersRequest()).workers
            busy = [w for w in workers if w.in_flight_batches > 0 and w.batches_done > 0]
            if busy and done > 0:
                victim = busy[0].address
                os.kill(procs[addresses.index(victim)].pid, signal.SIGKILL)
                killed.append(victim)
                return
            time.sleep(0.02)
        raise AssertionError("no worker was ever busy mid-job")

    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            final, disturbed = _run(stub, SPEC, kill_a_busy_worker)
            workers = {w.address: w for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers}
    finally:
        background_loop.run(server.stop(0.5))
    assert killed, "the test never killed a worker"
    assert workers[killed[0]].state == cpb.WORKER_STATE_DOWN
    assert workers[killed[0]].batches_failed >= 1  # its batch in flight was sent elsewhere
    assert all(p.done == p.total > 0 for p in final.progress)  # nothing lost, nothing twice
    assert disturbed.keys() == undisturbed.keys() == {"arc_easy", "piqa"}
    for task in undisturbed:
        assert len(disturbed[task]) == len(undisturbed[task]) == 12
        for got, want in zip(disturbed[task], undisturbed[task], strict=True):
            # Identical per-sample metrics and greedy flags; log-likelihoods equal up to float32
            # noise, since batches are cut by time (the hf worker's sums move ~1e-6 with the
            # batch they are computed in, as lm-eval's own do).
            assert (got["doc_id"], got["acc"], got["acc_norm"]) == \
                (want["doc_id"], want["acc"], want["acc_norm"]), task
            pairs = list(zip(got["filtered_resps"], want["filtered_resps"], strict=True))
            assert all(g[1] == w[1] for g, w in pairs)
            assert all(abs(float(g[0]) - float(w[0])) < 1e-4 for g, w in pairs), (task, pairs)
