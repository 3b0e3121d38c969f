"""``batch_api=true`` jobs end to end against the stand-ins' provider batch APIs (issue 26).

Real workers (local-completions on tests/servers/openai_compat.py's Files + Batches API,
anthropic-chat on tests/servers/anthropic_messages.py's Message Batches API) and real
coordinators on a SQLite file:

- a batch_api job's results (metrics and samples) equal the same job run online, on its own
  store: completions with a loglikelihood and a generation task, anthropic-chat generating;
- the coordinator process is killed (-9) while the batch is held pending at the provider; one
  restarted on the same store takes the job over, resumes polling the stored batch id, and once
  the batch is released the job succeeds with exactly one batch submitted (the stand-in counts);
- a batch whose lines partly fail has only those resent: the second submission holds exactly
  the failed requests.
"""

from __future__ import annotations

import json
import sqlite3
import time

import grpc
import pytest
from conftest import anthropic_test_server, run_evaluation
from provider_batch_standins import batch_submissions, control, openai_standin
from test_cli import ENV
from test_coordinator_crash import Coordinator
from test_provider_batch_jobs import _assert_same_results

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

GEN = "max_gen_toks=8"


@pytest.fixture(scope="module")
def openai_srv(real_model_dir):
    # the real model: loglikelihood needs prompt logprobs that pass the worker's probe
    srv = openai_standin(real_model_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def anthropic_srv(tiny_model_dir):
    srv = anthropic_test_server(tiny_model_dir)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch):
    monkeypatch.setenv("EVALFLEET_BATCH_POLL_S", "0.2")  # in-process coordinators
    monkeypatch.setitem(ENV, "EVALFLEET_BATCH_POLL_S", "0.2")  # coordinator processes


@pytest.fixture(scope="module")
def workers(background_loop, openai_srv, anthropic_srv, real_model_dir):
    """Worker address and model args, by backend; every worker has batch_api=true (it answers
    online requests as before)."""
    from evalfleet.inference.server import load_backend, start_worker

    args = {
        "local-completions": {"model": "smol", "base_url": openai_srv.base_url,
                              "tokenizer": str(real_model_dir), "probe_interval_s": 3600,
                              "batch_api": True},
        "anthropic-chat": {"model": "claude-stand-in", "base_url": anthropic_srv.base_url,
                           "api_key": "test-key", "batch_api": True},
    }
    servers = {name: background_loop.run(start_worker(load_backend(name, a), model_args=a))
               for name, a in args.items()}
    yield {name: (server.address, args[name]) for name, server in servers.items()}
    for server in servers.values():
        background_loop.run(server.stop(0.5))


@pytest.fixture()
def coordinators(background_loop, data_dir, tmp_path):
    """start(worker address, store file name) -> an in-process coordinator's address."""
    from evalfleet.server.service import start_coordinator
    from evalfleet.server.store import SqliteJobStore

    started = []

    def start(worker: str, name: str) -> str:
        store = SqliteJobStore(tmp_path / name)
        server, _ = background_loop.run(start_coordinator(workers=[worker], store=store,
                                                          data_dir=data_dir))
        started.append((server, store))
        return server.address

    yield start
    for server, store in started:
        background_loop.run(server.stop(0.5))
        background_loop.run(store.close())


def _spec(backend: str, model_args: dict, tasks: list[str], *, batch_api: bool, limit: int = 2,
          **extra) -> cpb.EvaluationSpec:
    args = {k: v for k, v in model_args.items() if k != "batch_api"}
    text = ",".join(f"{k}={v}" for k, v in args.items()) + (",batch_api=true" if batch_api else "")
    return cpb.EvaluationSpec(model=backend, model_args=text, tasks=tasks, limit=limit,
                              bootstrap_iters=0, log_samples=True, gen_kwargs=GEN, **extra)


def _records(path) -> list[tuple]:
    """(request count, state, attempt) of every provider-batch record, oldest first."""
    with sqlite3.connect(path) as conn:
        return [(len(json.loads(ids)), state, attempt) for ids, state, attempt in conn.execute(
            "SELECT request_ids, state, attempt FROM provider_batches ORDER BY created_at, chunk")]


@pytest.mark.parametrize("backend,server,tasks,extra", [
    # gsm8k without its few-shot examples: the real model reads its prompts at ~350 tokens/s
    ("local-completions", "openai_srv", ["arc_easy", "gsm8k"], {"num_fewshot": 0, "limit": 1}),
    ("anthropic-chat", "anthropic_srv", ["gsm8k"], {"apply_chat_template": True}),
], ids=["completions", "anthropic"])
def test_batch_api_job_equals_the_online_job(request, workers, coordinators, tmp_path, backend,
                                             server, tasks, extra):
    srv = request.getfixturevalue(server)
    address, model_args = workers[backend]
    online = run_evaluation(coordinators(address, "online.db"),
                            _spec(backend, model_args, tasks, batch_api=False, **extra))
    assert online[0].state == cpb.EVALUATION_STATE_SUCCEEDED, online[0].error
    before = batch_submissions(srv)
    batched = run_evaluation(coordinators(address, "batch.db"),
                             _spec(backend, model_args, tasks, batch_api=True, **extra))
    assert batched[0].state == cpb.EVALUATION_STATE_SUCCEEDED, batched[0].error
    kinds = 2 if "arc_easy" in tasks else 1
    assert batch_submissions(srv) - before == kinds  # one batch per request kind
    assert [state for _, state, _ in _records(tmp_path / "batch.db")] == ["done"] * kinds
    assert any("succeeded, 0 errored, 0 pending" in e.message for e in batched[1])
    _assert_same_results(batched, online)


def _wait(what: str, check, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _evaluation(address: str, job_id: str) -> cpb.Evaluation | None:
    try:
        with grpc.insecure_channel(address) as channel:
            return cpb_grpc.EvaluationServiceStub(channel).GetEvaluation(
                cpb.GetEvaluationRequest(id=job_id), timeout=10)
    except grpc.RpcError:
        return None


def test_coordinator_killed_while_the_batch_is_pending_submits_it_once(workers, anthropic_srv,
                                                                       tmp_path):
    address, model_args = workers["anthropic-chat"]
    store = tmp_path / "store.db"
    control(anthropic_srv, "/control/batches", {"hold": True})
    coordinator = Coordinator(str(store), [address], tmp_path / "coord.log").start()
    try:
        before = batch_submissions(anthropic_srv)
        with grpc.insecure_channel(coordinator.address) as channel:
            job = cpb_grpc.EvaluationServiceStub(channel).CreateEvaluation(
                cpb.CreateEvaluationRequest(spec=_spec(
                    "anthropic-chat", model_args, ["gsm8k"], batch_api=True,
                    apply_chat_template=True)), timeout=120)
        _wait("the batch id stored", lambda: _records(store) == [(2, "submitted", 1)])
        coordinator.kill9()
        control(anthropic_srv, "/control/batches", {"hold": False})
        coordinator.start()  # the same store and port
        _wait("the restarted coordinator resuming the batch", lambda: any(
            e.get("resumed") == 1 for e in coordinator.log_events("provider_batches")))
        control(anthropic_srv, "/control/batches/release", {})
        final = _wait("the job to end", lambda: (e := _evaluation(coordinator.address, job.id))
                      and e.state in (cpb.EVALUATION_STATE_SUCCEEDED,
                                      cpb.EVALUATION_STATE_FAILED) and e)
        assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
        assert batch_submissions(anthropic_srv) - before == 1
        assert _records(store) == [(2, "done", 1)]
    finally:
        coordinator.stop()
        control(anthropic_srv, "/control/batches", {"hold": False})
        control(anthropic_srv, "/control/batches/release", {})


def test_partly_failed_batch_resends_only_the_failed_requests(workers, coordinators,
                                                              anthropic_srv, tmp_path):
    address, model_args = workers["anthropic-chat"]
    control(anthropic_srv, "/control/batches", {"error_first": 2})
    try:
        before = batch_submissions(anthropic_srv)
        final, events, _, _ = run_evaluation(
            coordinators(address, "batch.db"),
            _spec("anthropic-chat", model_args, ["gsm8k"], batch_api=True, limit=4,
                  apply_chat_template=True))
    finally:
        control(anthropic_srv, "/control/batches", {"error_first": 0})
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert batch_submissions(anthropic_srv) - before == 2
    assert _records(tmp_path / "batch.db") == [(4, "failed", 1), (2, "done", 2)]
    assert any("left 2 of 4 requests unanswered" in e.message for e in events)
