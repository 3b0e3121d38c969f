"""Acceptance: the coordinator survives ``kill -9``.

Three real ``evalfleet serve worker`` processes (tiny model) and ``evalfleet serve coordinator``
as a real process on a store (SQLite file, or a real PostgreSQL server):

- the coordinator is killed (SIGKILL) mid-job while an ``evalfleet eval --coordinator`` client
  follows the job; it is restarted on the same store and port; the client reconnects, keeps
  following and writes results identical per sample to an undisturbed run; the restarted
  coordinator takes the job over under the same id and sends only the requests whose answers
  were not stored before the kill (its event "N answers from the store, M to compute" has N =
  the answers counted in the store right after the kill, and its workers answered M requests);
- two coordinators share one PostgreSQL database, jobs are submitted to both, one is killed:
  every job finishes SUCCEEDED exactly once (one SUCCEEDED transition in the two logs), the
  killed coordinator's jobs taken over by the other (``attempts``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_cli import ENV, EVALFLEET, _free_port
from test_fleet_worker_kill import running_workers

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

TASKS = "arc_easy,piqa"
LIMIT = 40
LEASE_S = 3


@pytest.fixture(scope="module")
def workers(tiny_model_dir, tmp_path_factory):
    with running_workers(tiny_model_dir, tmp_path_factory.mktemp("workers")) as (addrs, _):
        yield addrs


class Coordinator:
    """``evalfleet serve coordinator`` as a real process (stderr to a log file)."""

    def __init__(self, store: str, workers: list[str], log: Path, port: int | None = None):
        self.store, self.workers, self.log_path = store, workers, log
        self.port = port or _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Coordinator:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [*EVALFLEET, "serve", "coordinator", "--store", self.store, "--port",
                 str(self.port), "--workers", ",".join(self.workers), "--job_lease",
                 str(LEASE_S), "--batch_seconds", "0.3", "--health_interval", "0.5"],
                env=ENV, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                with grpc.insecure_channel(self.address) as channel:
                    status = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return self
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise AssertionError("coordinator did not start")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def stub(self, channel) -> cpb_grpc.EvaluationServiceStub:
        return cpb_grpc.EvaluationServiceStub(channel)

    def log_events(self, name: str) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    out.append(event)
        return out


def _samples(folder: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(folder.rglob("samples_*.jsonl")):
        task = re.match(r"samples_(.+?)_\d{4}-", path.name).group(1)
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            out.setdefault(task, []).append(
                {k: rec[k] for k in ("doc_id", "filtered_resps", "acc", "acc_norm")})
    return out


def _assert_identical(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() == {"arc_easy", "piqa"}
    for task in want:
        assert len(got[task]) == len(want[task]) == LIMIT
        for g, w in zip(got[task], want[task], strict=True):
            assert (g["doc_id"], g["acc"], g["acc_norm"]) == (w["doc_id"], w["acc"],
                                                              w["acc_norm"]), task
            pairs = list(zip(g["filtered_resps"], w["filtered_resps"], strict=True))
            assert all(a[1] == b[1] for a, b in pairs)
            assert all(abs(float(a[0]) - float(b[0])) < 1e-4 for a, b in pairs), (task, pairs)


def _client(coordinator: str, tiny_model_dir: Path, out: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as handle:
        return subprocess.Popen(
            [*EVALFLEET, "eval", "--coordinator", coordinator, "--model", "hf", "--tasks", TASKS,
             "--limit", str(LIMIT), "--bootstrap_iters", "0", "--log_samples", "--no_progress",
             "--output_path", str(out)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=handle)


@pytest.fixture(scope="module")
def undisturbed(workers, tiny_model_dir, tmp_path_factory):
    """Per-sample results of the job run without any crash (its own fresh store)."""
    folder = tmp_path_factory.mktemp("undisturbed")
    coordinator = Coordinator(str(folder / "store.db"), workers, folder / "coord.log").start()
    try:
        client = _client(coordinator.address, tiny_model_dir, folder / "out",
                         folder / "client.log")
        assert client.wait(timeout=300) == 0, (folder / "client.log").read_text()[-3000:]
    finally:
        coordinator.stop()
    return _samples(folder / "out")


def _store(url: str):
    from evalfleet.server.store import open_store

    return open_store(url)


def _ready_fingerprint(coordinator: Coordinator, n_workers: int) -> str:
    """The model fingerprint, once the coordinator's registry has every worker READY (a
    coordinator serves before its registry has fetched the workers' model info)."""
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(coordinator.address) as channel:
        while True:
            listed = coordinator.stub(channel).ListWorkers(cpb.ListWorkersRequest(),
                                                           timeout=10).workers
            ready = [w for w in listed if w.state == cpb.WORKER_STATE_READY and w.fingerprint]
            if len(ready) == n_workers:
                return ready[0].fingerprint
            assert time.monotonic() < deadline, f"workers not ready: {listed}"
            time.sleep(0.1)


def _job_and_answers(background_loop, store, fingerprint: str):
    jobs = background_loop.run(store.list_jobs())
    return jobs, background_loop.run(store.count_answers(fingerprint))


def _kill_mid_job(background_loop, store, fingerprint: str, coordinator: Coordinator):
    """``kill -9`` the coordinator once some answers are stored and its job still runs;
    returns the job and the answers stored at the kill."""
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "the job never had answers stored mid-run"
        jobs, stored = _job_and_answers(background_loop, store, fingerprint)
        if jobs and stored > 0:
            coordinator.kill9()
            break
        time.sleep(0.02)
    jobs, stored_at_kill = _job_and_answers(background_loop, store, fingerprint)
    (job,) = jobs
    assert job.state == cpb.EVALUATION_STATE_RUNNING, "the job ended before the kill"
    return job, stored_at_kill


def _kill_restart_and_follow(background_loop, store_url, workers, tiny_model_dir, tmp_path,
                             undisturbed):
    first = Coordinator(store_url, workers, tmp_path / "coord1.log").start()
    fingerprint = _ready_fingerprint(first, len(workers))
    client = _client(first.address, tiny_model_dir, tmp_path / "out", tmp_path / "client.log")
    store = _store(store_url)
    second = None
    try:
        job, stored_at_kill = _kill_mid_job(background_loop, store, fingerprint, first)
        # Restart on the same store and port; the client reconnects by itself.
        second = Coordinator(store_url, workers, tmp_path / "coord2.log", first.port).start()
        assert client.wait(timeout=300) == 0, (tmp_path / "client.log").read_text()[-3000:]
        with grpc.insecure_channel(second.address) as channel:
            stub = second.stub(channel)
            final = stub.GetEvaluation(cpb.GetEvaluationRequest(id=job.id), timeout=10)
            answered = sum(w.requests_answered for w in stub.ListWorkers(
                cpb.ListWorkersRequest(), timeout=10).workers)
    finally:
        if client.poll() is None:
            client.kill()
        first.stop()
        if second is not None:
            second.stop()
        background_loop.run(store.close())
    client_log = " ".join((tmp_path / "client.log").read_text().split())  # unwrap lines
    total = final.unique_requests
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert 0 < stored_at_kill < total
    # The restarted coordinator reused exactly the answers stored before the kill ...
    to_compute = total - stored_at_kill
    assert (f"evaluation {job.id}: {stored_at_kill} answers from the store, "
            f"{to_compute} to compute") in client_log, client_log
    # ... and its workers answered only the rest: nothing stored was sent again.
    assert answered == to_compute
    assert "reconnecting" in client_log
    record = background_loop.run(_read_job(store_url, job.id))
    assert record.attempts == 1 and record.results is not None
    _assert_identical(_samples(tmp_path / "out"), undisturbed)


async def _read_job(url: str, job_id: str):
    async with _store(url) as store:
        return await store.get_job(job_id)


def test_coordinator_kill_9_sqlite(background_loop, workers, tiny_model_dir, tmp_path,
                                   undisturbed):
    _kill_restart_and_follow(background_loop, str(tmp_path / "store.db"), workers,
                             tiny_model_dir, tmp_path, undisturbed)


def test_coordinator_kill_9_postgres(background_loop, workers, tiny_model_dir, tmp_path,
                                     undisturbed, postgres_server):
    _kill_restart_and_follow(background_loop, postgres_server.create_database("crash"),
                             workers, tiny_model_dir, tmp_path, undisturbed)


def test_two_coordinators_one_killed_every_job_once(background_loop, workers, tmp_path,
                                                    postgres_server):
    url = postgres_server.create_database("two")
    a = Coordinator(url, workers, tmp_path / "a.log").start()
    b = Coordinator(url, workers, tmp_path / "b.log").start()
    specs = [cpb.EvaluationSpec(model="hf", tasks=[task], limit=60, bootstrap_iters=0)
             for task in ("arc_easy", "piqa", "boolq", "arc_challenge")]
    store = _store(url)
    try:
        with grpc.insecure_channel(a.address) as ca, grpc.insecure_channel(b.address) as cb:
            futures = [c.stub(ch).CreateEvaluation.future(cpb.CreateEvaluationRequest(spec=s),
                                                          timeout=120)
                       for s, c, ch in zip(specs, (a, a, b, b), (ca, ca, cb, cb), strict=True)]
            ids = [f.result().id for f in futures]
        on_a = ids[:2]  # the other two on B
        # Kill A while a job of it is running, unfinished.
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, "no job of A ever ran"
            states = {j.id: j.state for j in background_loop.run(store.list_jobs())}
            if any(states.get(i) == cpb.EVALUATION_STATE_RUNNING for i in on_a):
                a.kill9()
                break
            time.sleep(0.02)
        at_kill = {j.id: j.state for j in background_loop.run(store.list_jobs())}
        taken = [i for i in on_a if at_kill[i] in (cpb.EVALUATION_STATE_QUEUED,
                                                   cpb.EVALUATION_STATE_RUNNING)]
        assert taken
        deadline = time.monotonic() + 300
        while True:
            assert time.monotonic() < deadline, "jobs never finished after the kill"
            jobs = {j.id: j for j in background_loop.run(store.list_jobs())}
            if all(j.state not in (cpb.EVALUATION_STATE_QUEUED, cpb.EVALUATION_STATE_RUNNING)
                   for j in jobs.values()):
                break
            time.sleep(0.5)
        # B serves every job's results, A's included.
        with grpc.insecure_channel(b.address) as cb:
            results = {i: b.stub(cb).GetResults(cpb.GetResultsRequest(id=i), timeout=30)
                       for i in ids}
    finally:
        a.stop()
        b.stop()
        background_loop.run(store.close())
    assert sorted(jobs) == sorted(ids)
    a_owner = a.log_events("job_created")[0]["owner"]
    b_owner = b.log_events("job_created")[0]["owner"]
    for job_id, job in jobs.items():
        assert job.state == cpb.EVALUATION_STATE_SUCCEEDED, (job_id, job.error)
        assert job.results is not None and results[job_id].tasks[0].sample_len == 60
        assert job.owner == (a_owner if job_id in on_a and job_id not in taken else b_owner)
        assert job.attempts == (1 if job_id in taken else 0)  # the takeover
    # Exactly once: one SUCCEEDED transition per job across both coordinators' logs.
    succeeded = [e["job"] for c in (a, b) for e in c.log_events("job_state")
                 if e["state"] == "EVALUATION_STATE_SUCCEEDED"]
    assert sorted(succeeded) == sorted(ids)
    assert sorted(e["job"] for e in b.log_events("job_claimed")) == sorted(taken)


def test_client_fails_over_to_another_coordinator_of_the_store(background_loop, workers,
                                                               tiny_model_dir, tmp_path,
                                                               undisturbed):
    """``eval --coordinator A,B``: A is killed mid-job and not restarted; the client moves to B,
    which follows the job from the store, takes it over when A's lease runs out and finishes it;
    the client writes results identical to an undisturbed run."""
    url = str(tmp_path / "shared.db")
    a = Coordinator(url, workers, tmp_path / "a.log").start()
    b = Coordinator(url, workers, tmp_path / "b.log").start()
    fingerprint = _ready_fingerprint(a, len(workers))
    client = _client(f"{a.address},{b.address}", tiny_model_dir, tmp_path / "out",
                     tmp_path / "client.log")
    store = _store(url)
    try:
        job, _ = _kill_mid_job(background_loop, store, fingerprint, a)
        assert client.wait(timeout=300) == 0, (tmp_path / "client.log").read_text()[-3000:]
    finally:
        if client.poll() is None:
            client.kill()
        a.stop()
        b.stop()
        background_loop.run(store.close())
    client_log = " ".join((tmp_path / "client.log").read_text().split())
    assert f"coordinator {a.address} unreachable" in client_log
    assert f"to {b.address}" in client_log
    record = background_loop.run(_read_job(url, job.id))
    assert record.state == cpb.EVALUATION_STATE_SUCCEEDED and record.attempts == 1
    assert [e["job"] for e in b.log_events("job_claimed")] == [job.id]
    _assert_identical(_samples(tmp_path / "out"), undisturbed)
