"""Adaptive concurrency of the remote backends (inference/backends/concurrency.py).

* the limiter alone: slow start to the ceiling, a cut on a throttle (once per round trip), round
  robin over flows;
* the Caller: a 429 uses up no try while the endpoint answers other calls, and does when it
  answers none;
* against the real OpenAI-compatible stand-in in ``--max-concurrent`` mode (429 above N calls in
  progress, N unknown to the client): two batches through one ``local-chat-completions``
  backend with num_concurrent=16 all succeed, the limiter cuts and settles near N, and the two
  batches finish together.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import httpx
import openai
import pytest
from conftest import openai_test_server

from evalfleet.inference.backends.api_http import Caller, RetryError
from evalfleet.inference.backends.base import (
    Cost,
    GenerationParams,
    GenerationRequest,
    ItemError,
)
from evalfleet.inference.backends.concurrency import INITIAL_LIMIT, Limiter

N = 4
DELAY_S = 0.05


def _status_error(status: int) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://x/v1/chat/completions")
    response = httpx.Response(status, request=request, headers={"retry-after": "0"},
                              json={"error": {"message": "slow down"}})
    return openai.APIStatusError("slow down", response=response, body=None)


def test_limiter_slow_start_cut_and_round_robin():
    async def run() -> None:
        lim = Limiter(16)
        assert lim.current == INITIAL_LIMIT
        tickets = [await lim.acquire() for _ in range(INITIAL_LIMIT)]
        for t in tickets:  # slow start: one more call per clean answer
            lim.release(t, ok=True)
        assert lim.current == 2 * INITIAL_LIMIT
        sent = [await lim.acquire() for _ in range(lim.current)]
        lim.release(sent[0], throttled=True)
        assert lim.current == int(2 * INITIAL_LIMIT * 0.7)  # cut once ...
        lim.release(sent[1], throttled=True)
        assert lim.current == int(2 * INITIAL_LIMIT * 0.7)  # ... per round trip
        for t in sent[2:]:
            lim.release(t, ok=True)
        assert lim.current < 2 * INITIAL_LIMIT - 1  # additive increase now, not doubling
        # round robin: flow "a" queued 3 waiters before "b" queued 1; "b" is served second
        busy = [await lim.acquire() for _ in range(lim.current)]
        order: list[str] = []

        async def want(flow: str) -> None:
            ticket = await lim.acquire(flow)
            order.append(flow)
            lim.release(ticket)

        waiters = [asyncio.create_task(want(f)) for f in ("a", "a", "a", "b")]
        await asyncio.sleep(0)
        lim.release(busy.pop())
        lim.release(busy.pop())
        await asyncio.gather(*waiters)
        assert order[:2] == ["a", "b"]
        for t in busy:
            lim.release(t)
        assert lim.in_flight == 0

    asyncio.run(run())


def test_a_throttled_call_uses_no_try_while_others_are_answered():
    async def run() -> None:
        caller = Caller(8, 2, api_root="http://free-retries.invalid/v1")
        throttles = [_status_error(429)] * 5  # more 429s than max_retries=2 allows

        async def throttled_then_ok() -> str:
            await asyncio.sleep(0.01)
            if throttles:
                raise throttles.pop()
            return "late"

        async def ok() -> str:
            await asyncio.sleep(0.005)
            return "ok"

        async def others() -> None:
            for _ in range(40):
                await caller.call(ok, Cost(), "other")

        cost = Cost()
        result, _ = await asyncio.gather(caller.call(throttled_then_ok, cost, "x"), others())
        assert result == "late" and cost.throttled_responses == 5 and cost.retries == 5

        async def never() -> str:  # nothing answered meanwhile: tries run out as before
            raise _status_error(429)

        with pytest.raises(RetryError, match="after 2 attempts"):
            await caller.call(never, Cost(), "x")

    asyncio.run(run())


@pytest.fixture(scope="module")
def limited_stand_in(tiny_model_dir):
    srv = openai_test_server(tiny_model_dir, "--max-concurrent", str(N), "--delay",
                             str(DELAY_S), "--retry-after", "0.2")
    yield srv
    srv.stop()


def _stats(srv) -> dict:
    root = srv.base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/admin/stats", timeout=10) as reply:
        return json.load(reply)


def test_settles_near_the_servers_limit_without_failures(limited_stand_in):
    from evalfleet.inference.server import load_backend

    args = {"model": "smol", "base_url": f"{limited_stand_in.base_url}/chat/completions",
            "num_concurrent": 16, "max_retries": 2}
    backend = load_backend("local-chat-completions", args)
    params = GenerationParams(until=["\n"], max_gen_toks=8)
    per_batch = 60

    async def batch(tag: str) -> tuple[list, float]:
        requests = [GenerationRequest([{"role": "user", "content": f"{tag} {i}"}], params)
                    for i in range(per_batch)]
        answers = await backend.generate_until(requests)
        return answers.results, time.perf_counter()

    async def run() -> tuple:
        await backend.start()
        try:
            started = time.perf_counter()
            (a, a_end), (b, b_end) = await asyncio.gather(batch("a"), batch("b"))
            return a + b, a_end - started, b_end - started, backend.caller.limiter
        finally:
            await backend.close()

    results, a_s, b_s, limiter = asyncio.run(run())
    assert not [r for r in results if isinstance(r, ItemError)]
    assert all(r == "The best answer is A" for r in results)
    stats = _stats(limited_stand_in)
    assert stats["answered"] >= 2 * per_batch and stats["rate_limited"] > 0  # it probed past N
    # cut, and settled near N (not at the ceiling of 16): the client counts a call in flight
    # until its answer is read, so on a loaded machine the server sees fewer at once than the
    # limiter allows, and the limit may end a step or two above N before the next 429
    assert limiter.throttles > 0 and N - 2 <= limiter.current <= N + 2
    ideal_s = 2 * per_batch * DELAY_S / N
    assert max(a_s, b_s) < 3 * ideal_s + 1.0, (a_s, b_s, ideal_s)
    assert min(a_s, b_s) / max(a_s, b_s) > 0.75  # neither batch starved the other


def test_a_job_through_a_coordinator_is_throttled_not_failed(limited_stand_in,
                                                             worker_and_coordinator):
    from conftest import run_evaluation

    from evalfleet.inference.server import load_backend
    from evalfleet.v1 import coordinator_pb2 as cpb

    args = {"model": "smol", "base_url": f"{limited_stand_in.base_url}/chat/completions",
            "num_concurrent": 4 * N, "max_retries": 2}
    address = worker_and_coordinator(load_backend("local-chat-completions", args), args)
    before = _stats(limited_stand_in)["rate_limited"]
    final, events, _, _ = run_evaluation(address, cpb.EvaluationSpec(
        model="local-chat-completions", tasks=["arc_challenge@generate"], limit=60,
        apply_chat_template=True, bootstrap_iters=0), timeout_s=120)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert _stats(limited_stand_in)["rate_limited"] > before
    notes = [e.message for e in events if "throttled responses, concurrency now" in e.message]
    assert notes, [e.message for e in events]  # the job's events show the throttling
    import grpc

    from evalfleet.client.workers_command import workers_table
    from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

    with grpc.insecure_channel(address) as channel:
        [worker] = cpb_grpc.EvaluationServiceStub(channel).ListWorkers(
            cpb.ListWorkersRequest(), timeout=10).workers
    assert 1 <= worker.api_concurrency <= 4 * N and worker.throttled_responses > 0
    columns, [row] = workers_table([worker], time.time())
    cell = row[[c.header for c in columns].index("API calls")]
    assert cell == f"{worker.api_concurrency} ({worker.throttled_responses} throttled)"
