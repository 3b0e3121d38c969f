"""The scheduler's and registry's decisions, on hand-made workers (no servers)."""

from __future__ import annotations

import asyncio

import pytest

from evalfleet.common.errors import FailedPreconditionError
from evalfleet.server.registry import CONNECTING, READY, Worker, WorkerRegistry
from evalfleet.server.scheduler import JobDispatch, Scheduler, SchedulerConfig
from evalfleet.server.workers import WorkItem
from evalfleet.v1 import inference_pb2 as ipb


def _info(name: str) -> ipb.ModelInfo:
    return ipb.ModelInfo(backend="sim", model_name=name, fingerprint=f"sha256:{name}",
                         capabilities=ipb.Capabilities(loglikelihood=True,
                                                       max_concurrent_batches=1))


def _worker(registry: WorkerRegistry, address: str, model: str | None) -> Worker:
    worker = Worker(address, "static", client=None)
    if model is not None:
        worker.info, worker.state = _info(model), READY
    registry.workers[address] = worker
    return worker


def test_a_job_is_not_placed_while_other_workers_are_still_connecting():
    """Seen as a flaky test: a worker of another model that had not answered yet was ignored,
    and the job went to the first worker that had."""
    async def main():
        registry = WorkerRegistry()
        _worker(registry, "a:1", "model-a")
        late = _worker(registry, "b:1", None)
        assert late.state == CONNECTING
        select = asyncio.ensure_future(registry.select(
            backend="", model_args={}, fingerprint="", allowed=None, wait_s=5.0))
        await asyncio.sleep(0.2)
        assert not select.done()  # waits for b to answer
        late.info = _info("model-b")
        registry._set_state(late, READY, "")
        with pytest.raises(FailedPreconditionError, match="several models"):
            await asyncio.wait_for(select, 5)
        # Once every worker has answered, the choice is immediate.
        chosen = await asyncio.wait_for(registry.select(
            backend="", model_args={"pretrained": "model-b"}, fingerprint="", allowed=None,
            wait_s=5.0), 1)
        assert [w.address for w in chosen] == ["b:1"]

    asyncio.run(main())


def test_tail_batches_share_what_is_left_equally():
    """The tail used to shrink geometrically (each worker got a share of what the previous one
    left), so a job ended in a run of ever smaller batches."""
    async def main():
        registry = WorkerRegistry()
        workers = [_worker(registry, f"w:{i}", "m") for i in range(4)]
        config = SchedulerConfig(max_batch_items=128)
        scheduler = Scheduler(registry, config)
        items = [WorkItem(f"{i:064x}", "loglikelihood", (f"{i:04d} is a question", " A"))
                 for i in range(1000)]

        async def on_answers(*_):
            return None

        job = JobDispatch.build("job", ("sim", "sha256:m"), items, on_answers, config=config)
        for worker in workers:
            scheduler.speed.record(worker, job, "loglikelihood", 100, 0.001)
        sizes = []
        while job.pending:
            for worker in workers:
                batch, _ = scheduler._take(worker, job)
                if batch is not None:
                    sizes.append(len(batch))
                    job.in_flight_items += len(batch)  # handed out, not answered yet
        assert sizes == [128] * 7 + [104], sizes
        await scheduler.close()

    asyncio.run(main())


def test_batch_events_are_coalesced_but_never_lost(monkeypatch):
    """A job with thousands of small batches used to publish an event (with the progress of
    every task) per batch; now one per PROGRESS_INTERVAL_S, every cost note, and the rest at
    the end."""
    from evalfleet.server import dispatch

    published: list[str] = []

    class FakeJob:
        def publish(self, message: str) -> None:
            published.append(message)

    clock = iter([100.0, 100.01, 100.02, 100.03, 100.5])
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: next(clock))
    events = dispatch._ProgressEvents(FakeJob())
    events.batch(10, "w:1", "")  # first: published at once
    events.batch(20, "w:2", "")  # within the interval: held
    events.batch(30, "w:1", "")
    events.batch(5, "w:2", " (2 HTTP retries)")  # a cost note: published at once, with the held
    events.batch(7, "w:1", "")  # 0.47 s later: published
    events.flush()  # nothing left
    assert published == ["batch of 10 done on w:1",
                         "3 batches (55 requests) done on w:1, w:2 (2 HTTP retries)",
                         "batch of 7 done on w:1"]


def test_choosing_a_jobs_workers_waits_once_in_all():
    """The choice is made twice (before and after the workers' model info is fetched again);
    the second may only wait what is left of ``wait_s``, not ``wait_s`` again."""
    from types import SimpleNamespace

    from evalfleet.server.job_setup import JobSetup
    from evalfleet.v1 import coordinator_pb2 as cpb

    waits: list[float] = []

    async def select(*, wait_s, **_):
        waits.append(wait_s)
        await asyncio.sleep(0.3)  # the first choice waited for a worker that was connecting
        return []

    async def refresh_info(workers):
        pass

    setup = SimpleNamespace(registry=SimpleNamespace(select=select, refresh_info=refresh_info))
    parsed = SimpleNamespace(model_args={})
    asyncio.run(JobSetup.select(setup, cpb.EvaluationSpec(model="sim"), parsed, None, 1.0))
    assert waits[0] == pytest.approx(1.0, abs=0.05) and waits[1] <= 0.75


def test_a_worker_that_does_not_read_same_context_gets_whole_items():
    """A document's choices leave their shared context out only for workers whose
    capabilities say they read ``same_context``; an older worker would score them against an
    empty context."""
    async def main():
        registry = WorkerRegistry()
        old, new = _worker(registry, "old:1", "m"), _worker(registry, "new:1", "m")
        new.info.capabilities.same_context = True
        config = SchedulerConfig(max_batch_items=8)
        scheduler = Scheduler(registry, config)
        items = [WorkItem(f"{i:064x}", "loglikelihood", (f"doc {i // 4}: which one?", f" {i % 4}"))
                 for i in range(16)]

        async def on_answers(*_):
            return None

        job = JobDispatch.build("job", ("sim", "sha256:m"), items, on_answers, config=config)
        for worker in (old, new):
            scheduler.speed.record(worker, job, "loglikelihood", 100, 0.001)
        sent = {}
        for worker in (old, new):
            batch, _ = scheduler._take(worker, job)
            sent[worker.address] = ipb.LoglikelihoodRequest.FromString(batch.payload).items
        assert [i.context for i in sent["old:1"]] == [f"doc {i // 4}: which one?"
                                                      for i in range(8)]
        assert not any(i.same_context for i in sent["old:1"])
        assert [i.same_context for i in sent["new:1"]] == [False, True, True, True]
        await scheduler.close()

    asyncio.run(main())
