"""Jobs with ``batch_api=true``: the coordinator's side of provider batch APIs (issue 26).

Here the provider is a fake inside a real worker (the tiny hf model answers each batch when it
is released), served over real gRPC on loopback to a real coordinator on a SQLite file: the
job's results equal the same job run online, a coordinator stopped while the batch is pending
and started again on the same store resumes polling and submits nothing again, and a batch
that leaves requests unanswered has only those resent. ``test_provider_batch_stand_ins.py``
runs the same against the OpenAI and Anthropic stand-ins and a coordinator killed with -9.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from conftest import run_evaluation

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from bench_provider_batches import close_enough  # noqa: E402 - after bench/ is on the path

from evalfleet.inference.backends.base import (
    Answers,
    Backend,
    BatchRequests,
    BatchStatus,
    BatchSubmission,
    ItemError,
    ProviderBatchState,
)
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ENDED, IN_PROGRESS = ProviderBatchState.ENDED, ProviderBatchState.IN_PROGRESS


class FakeProvider(Backend):
    """The tiny hf backend, plus a provider batch API kept in memory: a batch stays in
    progress while ``held``; ``fail`` items of the first batch end unanswered (retryable)."""

    name = "hf"

    def __init__(self, inner: Backend, *, batch_api: bool = True) -> None:
        self.inner = inner
        self.batch_api = batch_api
        self.held = False
        self.fail: set[int] = set()
        self.submissions: list[tuple[str, int]] = []  # (tag, items)
        self.by_tag: dict[str, str] = {}
        self.reused: list[str] = []  # tags submitted again and found
        self.stall_submits = False  # SubmitBatch makes the batch, then answers only once cleared
        self.polls = 0

    @classmethod
    def from_model_args(cls, model_args, *, batch_size=1):  # pragma: no cover - not loaded
        raise NotImplementedError

    def model_info(self):
        info = self.inner.model_info()
        return dataclasses.replace(info, capabilities=dataclasses.replace(
            info.capabilities, batch_api=self.batch_api))

    async def loglikelihood(self, requests):
        return await self.inner.loglikelihood(requests)

    async def loglikelihood_rolling(self, texts):
        return await self.inner.loglikelihood_rolling(texts)

    async def generate_until(self, requests):
        return await self.inner.generate_until(requests)

    async def submit_batch(self, tag: str, requests: BatchRequests) -> BatchSubmission:
        if tag in self.by_tag:
            self.reused.append(tag)
            return BatchSubmission(self.by_tag[tag], reused=True)
        batch_id = f"batch_{len(self.submissions)}"
        self.submissions.append((tag, len(requests.items)))
        self.by_tag[tag] = batch_id
        while self.stall_submits:  # made at the provider, its id not yet answered
            await asyncio.sleep(0.05)
        return BatchSubmission(batch_id)

    async def poll_batch(self, batch_id: str, requests: BatchRequests | None) -> BatchStatus:
        self.polls += 1
        n = dict(self.submissions_by_id())[batch_id]
        if self.held:
            return BatchStatus(IN_PROGRESS, total=n, pending=n)
        failing = self.fail if batch_id == "batch_0" else set()
        status = BatchStatus(ENDED, total=n, succeeded=n - len(failing), errored=len(failing))
        if requests is not None:
            answers = await (self.inner.loglikelihood(requests.items)
                             if requests.kind == "loglikelihood"
                             else self.inner.generate_until(requests.items))
            results: Sequence = [ItemError("expired before it ran", retryable=True)
                                 if i in failing else r for i, r in enumerate(answers.results)]
            status.answers = Answers(list(results), answers.cost)
        return status

    def submissions_by_id(self) -> list[tuple[str, int]]:
        return [(f"batch_{i}", n) for i, (_, n) in enumerate(self.submissions)]


@pytest.fixture(scope="module")
def hf_backend(tiny_model_dir):
    from evalfleet.inference.server import load_backend

    return load_backend("hf", {"pretrained": str(tiny_model_dir), "dtype": "float32",
                               "device": "cpu"}, batch_size=8)


@pytest.fixture()
def fleet(background_loop, hf_backend, tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """``fleet.worker(provider)`` serves ``provider`` on a real worker; ``fleet.coordinator(name)``
    starts a coordinator on it with the SQLite store ``name`` (stopping the one before, so a
    second call with the same name is a restart on the same store)."""
    from evalfleet.inference.server import start_worker
    from evalfleet.server.service import CoordinatorOptions, start_coordinator
    from evalfleet.server.store import SqliteJobStore, open_store

    monkeypatch.setenv("EVALFLEET_BATCH_POLL_S", "0.2")
    model_args = {"pretrained": str(tiny_model_dir), "dtype": "float32", "device": "cpu"}
    running: dict = {}

    def stop_coordinator() -> None:
        if "coordinator" in running:
            background_loop.run(running.pop("coordinator").stop(0.5))
            background_loop.run(running.pop("store").close())

    class Fleet:
        hf = hf_backend

        def stop_coordinator(self) -> None:
            """Stop the running coordinator (its store closed), as a crash leaves the store."""
            stop_coordinator()

        def worker(self, provider: FakeProvider) -> None:
            running["worker"] = background_loop.run(start_worker(provider,
                                                                 model_args=model_args))

        def coordinator(self, name: str) -> str:
            """``name``: a SQLite file in the test's folder, or a PostgreSQL URL."""
            stop_coordinator()
            store = open_store(name) if "://" in name else SqliteJobStore(tmp_path / name)
            options = CoordinatorOptions(job_lease_s=2.0, claim_interval_s=0.3)
            server, _ = background_loop.run(start_coordinator(
                workers=[running["worker"].address], store=store, data_dir=data_dir,
                options=options))
            running["coordinator"], running["store"] = server, store
            return server.address

    yield Fleet()
    stop_coordinator()
    if "worker" in running:
        background_loop.run(running["worker"].stop(0.5))


def _spec(tiny_model_dir, tasks: list[str], *, batch_api: bool, limit: int = 4,
          gen_kwargs: str = "") -> cpb.EvaluationSpec:
    args = f"pretrained={tiny_model_dir},dtype=float32" + (",batch_api=true" if batch_api else "")
    return cpb.EvaluationSpec(model="hf", model_args=args, tasks=tasks, limit=limit,
                              bootstrap_iters=0, log_samples=True, gen_kwargs=gen_kwargs)


def _assert_same_results(got: tuple, want: tuple) -> None:
    """Equal metrics (results JSON ``results``) and samples, key by key."""
    assert close_enough(got[2]["results"], want[2]["results"]), (got[2]["results"],
                                                                  want[2]["results"])
    assert got[3].keys() == want[3].keys()
    for task, records in want[3].items():
        assert len(got[3][task]) == len(records), task
        for g, w in zip(got[3][task], records, strict=True):
            for key in w:
                assert close_enough(g.get(key), w[key]), (task, w["doc_id"], key, g.get(key),
                                                          w[key])


def test_batch_api_job_equals_the_online_job(fleet, tiny_model_dir):
    """A loglikelihood task and a generation task: the batch_api job sends one provider batch
    per request kind, its events carry the provider's counts, and its results (metrics and
    samples) equal the same job run online on a store of its own."""
    provider = FakeProvider(fleet.hf)
    fleet.worker(provider)
    tasks, gen = ["arc_easy", "gsm8k"], "max_gen_toks=8"
    online = run_evaluation(fleet.coordinator("online.db"),
                            _spec(tiny_model_dir, tasks, batch_api=False, gen_kwargs=gen))
    assert online[0].state == cpb.EVALUATION_STATE_SUCCEEDED, online[0].error
    assert provider.submissions == []
    batched = run_evaluation(fleet.coordinator("batch.db"),
                             _spec(tiny_model_dir, tasks, batch_api=True, gen_kwargs=gen))
    final, events = batched[:2]
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert sorted(n for _, n in provider.submissions) == [4, 16]  # gsm8k 4, arc_easy 4 x 4
    messages = [e.message for e in events]
    assert any(m.startswith("provider batch batch_0: ended, ") for m in messages), messages
    _assert_same_results(batched, online)


def _wait(what: str, check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _records(path) -> list[tuple]:
    """(chunk, request count, batch id, state, attempt) of every provider-batch record."""
    with sqlite3.connect(path) as conn:
        return [(c, len(json.loads(ids)), b, s, a) for c, ids, b, s, a in conn.execute(
            "SELECT chunk, request_ids, batch_id, state, attempt FROM provider_batches "
            "ORDER BY created_at, chunk")]


def _state(address: str, job_id: str) -> cpb.Evaluation:
    with grpc.insecure_channel(address) as channel:
        return cpb_grpc.EvaluationServiceStub(channel).GetEvaluation(
            cpb.GetEvaluationRequest(id=job_id), timeout=10)


@pytest.fixture(params=["sqlite", "postgres"])
def store_name(request) -> str:
    """A SQLite file name, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return "batch.db"
    return request.getfixturevalue("postgres_server").create_database()


def _stored(name: str, tmp_path, job_id: str) -> list[tuple]:
    """(chunk, request count, batch id, state, attempt) of the job's records, read through
    the store's own API (SQLite file or PostgreSQL)."""
    from evalfleet.server.store import open_store

    async def read() -> list[tuple]:
        async with open_store(name if "://" in name else str(tmp_path / name)) as store:
            return [(r.chunk, len(r.request_ids), r.batch_id, r.state, r.attempt)
                    for r in await store.list_provider_batches(job_id)]

    return asyncio.run(read())


def _create(address: str, spec: cpb.EvaluationSpec) -> cpb.Evaluation:
    with grpc.insecure_channel(address) as channel:
        return cpb_grpc.EvaluationServiceStub(channel).CreateEvaluation(
            cpb.CreateEvaluationRequest(spec=spec), timeout=120)


def _ended(address: str, job_id: str) -> cpb.Evaluation:
    return _wait("the job to end", lambda: (e := _state(address, job_id)).state in (
        cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED) and e)


def test_restarted_coordinator_resumes_polling_and_submits_nothing_again(fleet, tiny_model_dir,
                                                                         tmp_path, store_name):
    """The coordinator stops while the batch is pending at the provider; one started on the
    same store (SQLite or PostgreSQL) takes the job over, polls the stored batch id and the
    job completes with the one submission."""
    provider = FakeProvider(fleet.hf)
    provider.held = True
    fleet.worker(provider)
    address = fleet.coordinator(store_name)
    job = _create(address, _spec(tiny_model_dir, ["arc_easy"], batch_api=True, limit=2))
    _wait("the batch id stored", lambda: _stored(store_name, tmp_path, job.id) == [
        ("loglikelihood-0000", 8, "batch_0", "submitted", 1)])
    polls = _wait("a poll", lambda: provider.polls)
    address = fleet.coordinator(store_name)  # stopped, and a new one on the same store
    _wait("the new coordinator polling", lambda: provider.polls > polls)
    provider.held = False
    final = _ended(address, job.id)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert provider.submissions == [(f"evalfleet-{job.id}-loglikelihood-0000", 8)]
    assert _stored(store_name, tmp_path, job.id) == [
        ("loglikelihood-0000", 8, "batch_0", "done", 1)]


def test_chunk_stopped_before_its_batch_id_was_stored_is_found_again_by_its_tag(
        fleet, tiny_model_dir, tmp_path):
    """The coordinator stops while SubmitBatch has made the batch but not answered (the
    record still says "submitting"): the next coordinator submits the chunk again under the
    same tag, the provider finds the batch made by it, and no second batch is created."""
    provider = FakeProvider(fleet.hf)
    provider.stall_submits = True
    fleet.worker(provider)
    address = fleet.coordinator("batch.db")
    job = _create(address, _spec(tiny_model_dir, ["arc_easy"], batch_api=True, limit=2))
    _wait("the batch made at the provider", lambda: provider.submissions)
    assert _stored("batch.db", tmp_path, job.id) == [("loglikelihood-0000", 8, "", "submitting",
                                                      1)]
    fleet.stop_coordinator()  # while its SubmitBatch is unanswered: no id is ever stored
    provider.stall_submits = False
    address = fleet.coordinator("batch.db")
    final = _ended(address, job.id)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert provider.submissions == [(f"evalfleet-{job.id}-loglikelihood-0000", 8)]
    assert provider.reused == [f"evalfleet-{job.id}-loglikelihood-0000"]
    assert _stored("batch.db", tmp_path, job.id) == [
        ("loglikelihood-0000", 8, "batch_0", "done", 1)]


def test_partly_failed_batch_resends_only_the_missing_requests(fleet, tiny_model_dir, tmp_path):
    """Two of the batch's eight requests end unanswered: a second batch of those two alone is
    submitted (attempt 2), and the job's results equal the online job's."""
    provider = FakeProvider(fleet.hf)
    provider.fail = {1, 6}
    fleet.worker(provider)
    spec = _spec(tiny_model_dir, ["arc_easy"], batch_api=True, limit=2)
    batched = run_evaluation(fleet.coordinator("batch.db"), spec)
    final, events = batched[:2]
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert [n for _, n in provider.submissions] == [8, 2]
    assert _records(tmp_path / "batch.db") == [
        ("loglikelihood-0000", 8, "batch_0", "failed", 1),
        ("loglikelihood-0000~2", 2, "batch_1", "done", 2)]
    assert any("left 2 of 8 requests unanswered" in e.message for e in events)
    online = run_evaluation(fleet.coordinator("online.db"),
                            _spec(tiny_model_dir, ["arc_easy"], batch_api=False, limit=2))
    _assert_same_results(batched, online)


def test_batch_api_job_needs_a_worker_with_the_batch_api(fleet, tiny_model_dir):
    """CreateEvaluation refuses a batch_api=true job whose worker has no batch API, before any
    work, naming the worker and what to do."""
    fleet.worker(FakeProvider(fleet.hf, batch_api=False))
    with grpc.insecure_channel(fleet.coordinator("batch.db")) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        cpb_grpc.EvaluationServiceStub(channel).CreateEvaluation(cpb.CreateEvaluationRequest(
            spec=_spec(tiny_model_dir, ["arc_easy"], batch_api=True, limit=2)), timeout=120)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "batch_api=true" in refused.value.details()
    assert "has no provider batch API" in refused.value.details()


def test_cancelled_job_stops_polling_and_cancels_nothing_at_the_provider(fleet, tiny_model_dir,
                                                                         tmp_path):
    """A batch_api job cancelled while its batch is pending ends CANCELLED at once; its batch
    is left at the provider (no cancel call exists) and is not polled again."""
    provider = FakeProvider(fleet.hf)
    provider.held = True
    fleet.worker(provider)
    address = fleet.coordinator("batch.db")
    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        job = stub.CreateEvaluation(cpb.CreateEvaluationRequest(
            spec=_spec(tiny_model_dir, ["arc_easy"], batch_api=True, limit=2)), timeout=120)
        _wait("a poll", lambda: provider.polls)
        cancelled = stub.CancelEvaluation(cpb.CancelEvaluationRequest(id=job.id), timeout=30)
    assert cancelled.state == cpb.EVALUATION_STATE_CANCELLED
    polls = provider.polls
    time.sleep(1.0)  # five poll intervals
    assert provider.polls == polls
    assert len(provider.submissions) == 1
    assert _records(tmp_path / "batch.db") == [("loglikelihood-0000", 8, "batch_0", "submitted",
                                                1)]


def test_requests_are_cut_into_chunks_of_the_configured_size(fleet, tiny_model_dir, tmp_path,
                                                             monkeypatch):
    """EVALFLEET_BATCH_CHUNK bounds the requests of one provider batch: eight requests at three
    a chunk are three batches (3, 3, 2), each submitted once under its own tag."""
    monkeypatch.setenv("EVALFLEET_BATCH_CHUNK", "3")
    provider = FakeProvider(fleet.hf)
    fleet.worker(provider)
    final = run_evaluation(fleet.coordinator("batch.db"),
                           _spec(tiny_model_dir, ["arc_easy"], batch_api=True, limit=2))[0]
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert [n for _, n in provider.submissions] == [3, 3, 2]
    assert len({tag for tag, _ in provider.submissions}) == 3
    assert [(n, state) for _, n, _, state, _ in _records(tmp_path / "batch.db")] == [
        (3, "done"), (3, "done"), (2, "done")]


@pytest.mark.parametrize("name,value", [("EVALFLEET_BATCH_CHUNK", "lots"),
                                        ("EVALFLEET_BATCH_CHUNK", "0"),
                                        ("EVALFLEET_BATCH_POLL_S", "-1")])
def test_bad_batch_settings_are_one_line_naming_the_variable(monkeypatch, name, value):
    from evalfleet.common.errors import InvalidArgumentError
    from evalfleet.server.provider_batches import chunk_size, poll_interval_s

    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidArgumentError) as refused:
        chunk_size() if name == "EVALFLEET_BATCH_CHUNK" else poll_interval_s()
    assert str(refused.value).startswith(f"{name}={value!r} on the coordinator: give ")
    assert "\n" not in str(refused.value)
