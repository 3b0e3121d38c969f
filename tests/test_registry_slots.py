"""The registry owns its workers' batch slots (issue 25): the scheduler takes and frees them
through ``acquire_slot``/``release_slot`` and never edits a worker's counters."""

from __future__ import annotations

import asyncio

from evalfleet.server.registry import READY, Worker, WorkerRegistry
from evalfleet.v1 import inference_pb2 as ipb


class _Client:
    async def close(self) -> None:
        pass


def test_slots_are_counted_per_job_and_a_drained_worker_leaves_after_its_last_batch():
    async def main():
        registry = WorkerRegistry()
        worker = Worker("w:1", "static", client=_Client())
        worker.info, worker.state = ipb.ModelInfo(
            capabilities=ipb.Capabilities(max_concurrent_batches=2)), READY
        registry.workers[worker.address] = worker
        assert worker.free_slots == 3
        registry.acquire_slot(worker, "job-a")
        registry.acquire_slot(worker, "job-a")
        registry.acquire_slot(worker, "job-b")
        assert (worker.in_flight, worker.free_slots) == (3, 0)
        assert worker.to_proto().evaluations == ["job-a", "job-b"]
        registry.release_slot(worker, "job-b")
        assert worker.jobs_in_flight == {"job-a": 2} and worker.free_slots == 1
        registry.drain(worker.address, "test")  # no new batches; kept while two are out
        registry.release_slot(worker, "job-a")
        assert registry.workers.get("w:1") is worker
        registry.release_slot(worker, "job-a")  # its last batch returned: removed
        assert "w:1" not in registry.workers and worker.jobs_in_flight == {}
        await asyncio.sleep(0)  # the client's close, scheduled by the removal

    asyncio.run(main())
