"""A worker never computes a batch whose caller has gone (deadline passed while it queued)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from evalfleet.v1 import inference_pb2 as ipb
from evalfleet.v1 import inference_pb2_grpc as ipb_grpc


def _request(tag: str, n: int) -> ipb.LoglikelihoodRequest:
    return ipb.LoglikelihoodRequest(items=[
        ipb.LoglikelihoodItem(request_id=f"{tag}{i}", context="Question: 2+2?\nAnswer:",
                              continuation=f" {i}") for i in range(n)])


@pytest.fixture()
def gated_worker(background_loop, tiny_model_dir):
    """A real tiny-model worker whose loglikelihood compute step waits at a gate the test
    opens (batches are prepared outside the compute lock, computed under it)."""
    from evalfleet.inference.server import load_backend, start_worker

    backend = load_backend("hf", {"pretrained": str(tiny_model_dir), "device": "cpu"}, 4)
    computed: list[int] = []
    started, gate = threading.Event(), threading.Event()
    real = backend._score  # the compute step, which runs under the compute lock

    def gated(prepared):
        computed.append(len(prepared.reqs))  # a planned batch (HFBackend._plan)
        started.set()
        gate.wait(60)
        return real(prepared)

    backend._score = gated
    server = background_loop.run(start_worker(backend))
    yield server, computed, started, gate
    gate.set()
    background_loop.run(server.stop(0.5))


def test_batch_whose_deadline_passes_in_the_queue_is_never_computed(gated_worker):
    server, computed, started, gate = gated_worker
    with grpc.insecure_channel(server.address) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        first: dict = {}
        runner = threading.Thread(
            target=lambda: first.update(r=stub.Loglikelihood(_request("a", 3), timeout=60)))
        runner.start()
        assert started.wait(30), "the first batch never started"
        with pytest.raises(grpc.RpcError) as err:  # queued behind the first batch
            stub.Loglikelihood(_request("b", 5), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gate.set()
        runner.join(60)
        assert [r.request_id for r in first["r"].results] == ["a0", "a1", "a2"]
        time.sleep(0.5)  # room for the worker to (wrongly) start the expired batch
        assert stub.Loglikelihood(_request("c", 1), timeout=60).results[0].request_id == "c0"
    assert computed == [3, 1]  # batch b (5 items) was never computed
