"""A job's usage across a coordinator restart (issue 26, "What a job costs").

The coordinator stores a job's per-task usage with its progress (each lease renewal, each
batch counted, the end) and a job resumed after ``kill -9`` starts from it: the final results'
``evalfleet_usage`` equals what the OpenAI stand-in itself counted (``GET /admin/stats``) over
both coordinators. ``GetEvaluation``/``ListEvaluations`` carry the usage so far, from the job
in memory and from the store. The rule checked at the kill: every answer the stand-in gave was
received and stored by the first coordinator (its worker is stopped gracefully, its batches in
flight answered, before the kill), so nothing is paid twice. A call a worker completes for a
coordinator already dead is paid at the provider but its answer is lost: the job sends it
again and counts it once, for the answer it keeps (see server/usage.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import grpc
from conftest import openai_test_server
from test_coordinator_crash import LEASE_S, Coordinator

from evalfleet.server.job_leases import LeaseKeeper
from evalfleet.server.store import SqliteJobStore
from evalfleet.server.store.base import decode_progress, encode_progress
from evalfleet.server.usage import JobUsage
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

TOKENS = ("requests", "prompt_tokens", "completion_tokens")
LIMIT = 60  # gsm8k documents: the first batch (16) and those in flight at the kill leave some
PRICE = cpb.ModelPrice(model="smol", input_per_million=1.0, output_per_million=4.0)


def _spent(port: int) -> dict[str, int]:
    """The stand-in's own count: calls answered and the tokens its answers reported."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/stats", timeout=10) as r:
        stats = json.loads(r.read())
    usage = stats["usage"]
    return {"requests": stats["answered"], "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"]}


def _counts(usage) -> dict[str, int]:
    get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k)
    return {k: get(k) for k in TOKENS}


def _wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return got


def test_usage_survives_a_kill_9_and_equals_the_stand_ins_count(
        background_loop, data_dir, tiny_model_dir, tmp_path):
    from evalfleet.inference.server import load_backend, start_worker
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    srv = openai_test_server(tiny_model_dir, "--delay", "0.05")
    args = {"model": "smol", "base_url": f"{srv.base_url}/chat/completions",
            "num_concurrent": 2}

    def serve():
        return background_loop.run(start_worker(load_backend("local-chat-completions", args),
                                                model_args=args))

    worker = serve()
    path = tmp_path / "jobs.db"
    probe = SqliteJobStore(path)  # the test's own view of the store
    first = Coordinator(str(path), [worker.address], tmp_path / "first.log").start()
    spec = cpb.EvaluationSpec(model="local-chat-completions", tasks=["gsm8k"], limit=LIMIT,
                              num_fewshot=0, bootstrap_iters=0, apply_chat_template=True,
                              gen_kwargs="max_gen_toks=4",
                              price_table=cpb.PriceTable(currency="EUR", models=[PRICE]))
    server = None
    try:
        before = _spent(srv.port)
        with grpc.insecure_channel(first.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            job_id = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec),
                                           timeout=60).id
            # GetEvaluation of the job in memory carries its usage as it grows.
            live = _wait_for("usage on GetEvaluation", lambda: (e := stub.GetEvaluation(
                cpb.GetEvaluationRequest(id=job_id), timeout=10)).usage.requests >= 2 and e)
        assert live.state == cpb.EVALUATION_STATE_RUNNING
        assert [t.task for t in live.task_usage] == ["gsm8k"]
        assert _counts(live.task_usage[0].usage) == _counts(live.usage)
        assert live.usage.currency == "EUR" and live.usage.cost > 0

        # The worker stops: its batches in flight are answered and stored, no new one starts.
        background_loop.run(worker.stop(30))

        def caught_up() -> dict | None:
            stored = decode_progress(background_loop.run(probe.get_job(job_id)).progress)
            spent = {k: v - before[k] for k, v in _spent(srv.port).items()}
            return spent if _counts(stored.usage) == spent else None

        at_kill = _wait_for("the stored usage to reach the stand-in's count", caught_up)
        first.kill9()  # mid-job: its lease is not released
        dead = background_loop.run(probe.get_job(job_id))
        done = sum(p.done for p in decode_progress(dead.progress).progress)
        assert dead.state == cpb.EVALUATION_STATE_RUNNING and 0 < done < LIMIT
        worker = serve()
        server, _ = background_loop.run(start_coordinator(
            store=SqliteJobStore(path), options=CoordinatorOptions(
                workers=[worker.address], data_dir=data_dir, health_interval_s=0.3,
                job_lease_s=LEASE_S, claim_interval_s=0.2)))
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            # Before the lease runs out: answered from the store, as the dead one stored it.
            shown = stub.GetEvaluation(cpb.GetEvaluationRequest(id=job_id), timeout=10)
            [listed] = stub.ListEvaluations(cpb.ListEvaluationsRequest(), timeout=10).evaluations
            assert shown.state == cpb.EVALUATION_STATE_RUNNING
            assert _counts(shown.usage) == _counts(listed.usage) == at_kill
            assert shown.usage.cost > 0 and [t.task for t in listed.task_usage] == ["gsm8k"]

            final = _wait_for("the job to finish on the second coordinator", lambda: (
                e := stub.GetEvaluation(cpb.GetEvaluationRequest(id=job_id), timeout=10)
            ).state in (cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED) and e,
                timeout=90)
            assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
            results = json.loads(stub.GetResults(cpb.GetResultsRequest(id=job_id),
                                                 timeout=30).results_json)
        spent = {k: v - before[k] for k, v in _spent(srv.port).items()}
        usage = results["evalfleet_usage"]
        assert spent["requests"] == LIMIT > at_kill["requests"]  # nothing paid twice
        assert _counts(usage["total"]) == _counts(usage["tasks"]["gsm8k"]) == spent
        assert _counts(final.usage) == spent and final.usage.cost == usage["total"]["cost"]
        ended = background_loop.run(probe.get_job(job_id))
        assert ended.attempts == dead.attempts + 1  # taken over, not run again from scratch
        assert _counts(decode_progress(ended.progress).usage) == spent
    finally:
        first.stop()
        if server is not None:
            background_loop.run(server.stop(0.2))
        background_loop.run(worker.stop(0.2))
        background_loop.run(probe.close())
        srv.stop()


def test_a_progress_record_from_before_usage_was_kept_decodes_with_zero_usage():
    """The previous version stored ``Evaluation(progress, unique_requests)`` alone."""
    progress = [cpb.TaskProgress(task="arc_easy", done=3, total=8, docs_total=2)]
    old = cpb.Evaluation(progress=progress, unique_requests=8).SerializeToString()
    decoded = decode_progress(old)
    assert list(decoded.progress) == progress and decoded.unique_requests == 8
    assert decoded.usage == cpb.TokenUsage() and not decoded.task_usage
    assert JobUsage.restore(decoded.task_usage).total().as_dict() == dict.fromkeys(
        ("requests", "prompt_tokens", "cached_tokens", "completion_tokens",
         "reasoning_tokens"), 0)
    # What this version stores round-trips, and a job resumed from it starts from it.
    counted = cpb.TaskUsage(task="arc_easy", usage=cpb.TokenUsage(
        requests=3, prompt_tokens=30, cached_tokens=8, completion_tokens=3))
    new = decode_progress(encode_progress(progress, 8, [counted], counted.usage))
    assert list(new.task_usage) == [counted] and new.usage == counted.usage
    restored = JobUsage.restore(new.task_usage)
    assert restored.tasks["arc_easy"].as_dict() == {
        "requests": 3, "prompt_tokens": 30, "cached_tokens": 8, "completion_tokens": 3,
        "reasoning_tokens": 0}


def test_a_counted_batch_is_stored_at_once_one_write_at_a_time(background_loop):
    """``LeaseKeeper.checkpoint`` (what ``JobUsage.on_change`` calls for a held job): the
    usage is written at once, not at the next renewal (a lease of 30 s here); batches counted
    while a write is under way are written together by one more; a job not held writes
    nothing."""

    class Store:
        def __init__(self) -> None:
            self.writes: list[tuple[str, bytes]] = []

        async def renew_lease(self, job_id: str, owner: str, lease_s: float, *,
                              progress: bytes | None = None, now: float | None = None) -> bool:
            self.writes.append((job_id, progress))
            await asyncio.sleep(0.05)
            return True

    class CountingJob:
        lost = False
        batches = 0

        def stored_progress(self) -> bytes:
            return str(self.batches).encode()

    async def scenario() -> list[tuple[str, bytes]]:
        store, job = Store(), CountingJob()
        keeper = LeaseKeeper(store, None, {"a": job, "b": CountingJob()}, owner="me",
                             lease_s=30, claim_interval_s=None, resume=None)
        keeper.held.add("a")
        for _ in range(5):
            job.batches += 1
            keeper.checkpoint("a")
            keeper.checkpoint("b")
            await asyncio.sleep(0)
        deadline = time.monotonic() + 5
        while keeper._checkpoints and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await keeper.stop()
        return store.writes

    assert background_loop.run(scenario()) == [("a", b"1"), ("a", b"5")]
