"""Worker health is not a client's to break: a request's error is that request's (the worker
answers it on the item, the coordinator retries it and keeps the worker READY), and a worker
that goes DOWN gives its batches in flight back at once. Units: the servicer on a fake backend,
the scheduler on hand-made workers whose calls are scripted (no servers)."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from evalfleet.common.errors import UnavailableError
from evalfleet.inference.backends.base import Answers, Cost, TokenScores
from evalfleet.inference.server import InferenceServicer
from evalfleet.server.registry import DOWN, READY, Worker, WorkerRegistry
from evalfleet.server.scheduler import JobDispatch, Scheduler, SchedulerConfig
from evalfleet.server.workers import WorkItem
from evalfleet.v1 import inference_pb2 as ipb


class _Backend:
    """Raises for a batch holding a continuation " boom" (as hf raises for a whole batch)."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.unavailable = False

    async def loglikelihood(self, requests):
        self.calls.append(len(requests))
        if self.unavailable:
            raise UnavailableError("the model server is gone")
        if any(cont == " boom" for _, cont in requests):
            raise ValueError("`top_k` has to be a strictly positive integer")
        scores = TokenScores(np.array([-1.5], np.float32), np.array([True]))
        return Answers([scores] * len(requests), Cost(positions_computed=len(requests)))

    async def generate_until(self, requests):
        self.calls.append(len(requests))
        return Answers([f"echo {r.context}" for r in requests], Cost())


def test_the_worker_answers_a_raising_request_on_its_item_and_the_rest_of_its_batch():
    backend = _Backend()
    servicer = InferenceServicer(backend)
    conts = [" a", " b", " boom", " c", " d"]
    request = ipb.LoglikelihoodRequest(items=[
        ipb.LoglikelihoodItem(request_id=f"r{i}", context="ctx", continuation=c)
        for i, c in enumerate(conts)])
    response = asyncio.run(servicer.Loglikelihood(request, None))
    errors = {r.request_id: r.error for r in response.results if r.HasField("error")}
    assert list(errors) == ["r2"]
    assert errors["r2"].retryable and "ValueError: `top_k`" in errors["r2"].message
    assert [list(r.logprobs) for r in response.results if r.request_id != "r2"] == [[-1.5]] * 4
    assert response.cost.positions_computed == 4
    assert len(backend.calls) <= 2 * len(conts)  # halving, not one call per request each time

    # A generation item no backend can generate with is refused on its own item.
    gen = ipb.GenerateUntilRequest(items=[
        ipb.GenerateItem(request_id="g0", context="hi", params=ipb.GenerationParams()),
        ipb.GenerateItem(request_id="g1", context="hi", params=ipb.GenerationParams(top_p=2.0)),
    ])
    answered = asyncio.run(servicer.GenerateUntil(gen, None)).results
    assert answered[0].text == "echo hi" and not answered[0].HasField("error")
    assert not answered[1].error.retryable and "items[1].params.top_p" in answered[1].error.message

    # The worker's own failure still fails the call (UNAVAILABLE: the worker is taken out).
    backend.unavailable = True
    with pytest.raises(UnavailableError):
        asyncio.run(servicer.Loglikelihood(request, None))


def _info() -> ipb.ModelInfo:
    return ipb.ModelInfo(backend="sim", model_name="m", fingerprint="sha256:m",
                         capabilities=ipb.Capabilities(loglikelihood=True,
                                                       max_concurrent_batches=1))


class _Client:
    """A worker's batches, scripted: ``fail`` raises that status for the next batches,
    ``hold`` keeps calls waiting until it is set."""

    def __init__(self) -> None:
        self.fail: list[grpc.StatusCode] = []
        self.hold: asyncio.Event | None = None
        self.calls = 0
        self.in_call = 0

    def call(self, request_type: str, payload: bytes, timeout_s: float):
        return self._answer(payload)

    async def _answer(self, payload: bytes) -> bytes:
        self.calls += 1
        self.in_call += 1
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.fail:
                code = self.fail.pop(0)
                raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           details=f"internal error: ValueError ({code.name})")
            ids = [i.request_id for i in ipb.LoglikelihoodRequest.FromString(payload).items]
            return ipb.LoglikelihoodResponse(results=[
                ipb.TokenScores(request_id=rid, logprobs=[-1.0], greedy=[True]) for rid in ids
            ]).SerializeToString()
        finally:
            self.in_call -= 1


def _fleet(n: int) -> tuple[WorkerRegistry, list[Worker]]:
    registry = WorkerRegistry()
    workers = []
    for i in range(n):
        worker = Worker(f"w:{i}", "static", client=_Client())
        worker.info, worker.state = _info(), READY
        registry.workers[worker.address] = worker
        workers.append(worker)
    return registry, workers


def _job(n: int, config: SchedulerConfig, counted: list[str]) -> JobDispatch:
    items = [WorkItem(f"{i:064x}", "loglikelihood", (f"question {i}", " A")) for i in range(n)]

    async def on_answers(queue, indices, answers, worker, cost):
        counted.extend(answers.ids)

    return JobDispatch.build("job", ("sim", "sha256:m"), items, on_answers, config=config)


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT])
def test_an_error_a_worker_answers_fails_the_requests_not_the_worker(code):
    """Both workers were marked DOWN for every INTERNAL answer (29 times in 8 s in the issue)
    and another team's job was refused "no worker is up"."""
    async def main():
        registry, (a, b) = _fleet(2)
        a.client.fail = [code]
        scheduler = Scheduler(registry, SchedulerConfig(initial_batch_items=4))
        counted: list[str] = []
        job = _job(12, scheduler.config, counted)
        await asyncio.wait_for(scheduler.run(job), 10)
        await scheduler.close()
        return a, b, job, counted

    a, b, job, counted = asyncio.run(main())
    assert a.state == b.state == READY
    assert a.batches_failed == 1 and code.name in a.last_error
    assert sorted(counted) == sorted(set(counted)) and len(counted) == 12  # each once
    assert job.answered == 12 and job.remaining == 0


def test_a_request_failing_on_every_try_fails_its_job_and_leaves_the_worker_ready():
    async def main():
        registry, (a,) = _fleet(1)
        a.client.fail = [grpc.StatusCode.INTERNAL] * 10
        scheduler = Scheduler(registry, SchedulerConfig(initial_batch_items=1))
        job = _job(1, scheduler.config, [])
        with pytest.raises(Exception, match=r"failed on every try \(3 tries\).*INTERNAL"):
            await asyncio.wait_for(scheduler.run(job), 10)
        await scheduler.close()
        return a

    a = asyncio.run(main())
    assert a.state == READY and a.client.calls == 3


def test_a_worker_gone_down_gives_its_batch_in_flight_to_the_others_at_once():
    """A SIGSTOPped worker's batch was requeued only at its deadline (600 s for a first batch):
    the job sat at 97% with the other worker idle. A late answer must not count twice."""
    async def main():
        registry, (stuck, ok) = _fleet(2)
        stuck.client.hold = asyncio.Event()
        scheduler = Scheduler(registry, SchedulerConfig(initial_batch_items=4))
        counted: list[str] = []
        job = _job(20, scheduler.config, counted)
        running = asyncio.ensure_future(scheduler.run(job))
        while not stuck.client.in_call:
            await asyncio.sleep(0.001)
        registry._set_state(stuck, DOWN, "DEADLINE_EXCEEDED: health check")  # as health does
        started = time.monotonic()
        await asyncio.wait_for(running, 5)
        took = time.monotonic() - started
        assert await asyncio.wait_for(scheduler.settle(5), 1)  # not waiting for the stuck one
        stuck.client.hold.set()  # the stopped worker resumes and answers, late
        while stuck.in_flight:
            await asyncio.sleep(0.001)
        await scheduler.close()
        return stuck, job, counted, took

    stuck, job, counted, took = asyncio.run(main())
    assert took < 2.0
    assert len(counted) == len(set(counted)) == 20 and job.answered == 20 and job.remaining == 0
    assert stuck.requests_answered == 4  # its late answer arrived and was not counted again


def test_a_request_that_failed_on_a_worker_is_retried_on_another():
    """A worker that answers every batch with an error stays READY now, so its failed requests
    must not go back to it while another worker could take them (it would spend their tries)."""
    async def main():
        registry, (bad, good) = _fleet(2)
        bad.client.fail = [grpc.StatusCode.INTERNAL] * 100
        good.client.hold = asyncio.Event()  # busy while the bad one is free and failing
        scheduler = Scheduler(registry, SchedulerConfig(initial_batch_items=4))
        counted: list[str] = []
        job = _job(8, scheduler.config, counted)
        running = asyncio.ensure_future(scheduler.run(job))
        await asyncio.sleep(0.3)
        good.client.hold.set()
        await asyncio.wait_for(running, 5)
        await scheduler.close()
        return bad, good, counted

    bad, good, counted = asyncio.run(main())
    assert bad.client.calls == 1 and bad.state == READY
    assert len(counted) == len(set(counted)) == 8 and good.requests_answered == 8
