"""Small inputs a real coordinator gets over gRPC: a worker address that is not host:port, the
Bearer scheme in any case (RFC 6750), and an unknown task whose file could not be read."""

from __future__ import annotations

import sys

import grpc
import pytest
from conftest import REPO_ROOT

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

sys.path.insert(0, str(REPO_ROOT / "bench"))
from simworker import Script, start_simulated_worker  # noqa: E402

TOKEN = "tok-for-task-files-tests"


@pytest.fixture(scope="module")
def guarded_coordinator(background_loop, data_dir, tmp_path_factory):
    """A coordinator (one simulated worker) that requires a token and lets clients name task
    folders."""
    from evalfleet.common.security import ServerSecurity
    from evalfleet.server.access import AccessPolicy
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN)
    worker, _ = background_loop.run(start_simulated_worker(Script()))
    server, _ = background_loop.run(start_coordinator(options=CoordinatorOptions(
        workers=[worker.address], data_dir=data_dir, health_interval_s=0.2,
        policy=AccessPolicy(allow_include_paths=True),
        security=ServerSecurity.from_files(token_file=str(token_file)))))
    with grpc.insecure_channel(server.address) as channel:
        yield channel
    background_loop.run(server.stop(0.2))
    background_loop.run(worker.stop(0.2))


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(guarded_coordinator, scheme):
    """Before: only ``Bearer`` passed; ``bearer TOKEN`` was PERMISSION_DENIED."""
    stub = cpb_grpc.EvaluationServiceStub(guarded_coordinator)
    stub.ListWorkers(cpb.ListWorkersRequest(), timeout=10,
                     metadata=(("authorization", f"{scheme} {TOKEN}"),))
    for wrong in (f"{scheme} other", f"Basic {TOKEN}", f"{scheme}{TOKEN}"):
        with pytest.raises(grpc.RpcError) as err:
            stub.ListWorkers(cpb.ListWorkersRequest(), timeout=10,
                             metadata=(("authorization", wrong),))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("address", ["\x00:1", "host name:80", "host:0", "host:65536",
                                     "host:+80", "[not-ipv6]:80", ":80", "h\u00e9:80"])
def test_register_worker_refuses_an_address_that_is_not_host_port(guarded_coordinator,
                                                                  address):
    """Before: ``"\\x00:1"``, ``host name:80``, ``[not-ipv6]:80`` and ``hé:80`` were
    registered (the others were refused already)."""
    registry = cpb_grpc.WorkerRegistryServiceStub(guarded_coordinator)
    with pytest.raises(grpc.RpcError) as err:
        registry.RegisterWorker(cpb.RegisterWorkerRequest(address=address), timeout=10,
                                metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"address: {address!r} is not host:port")
    assert "\n" not in err.value.details()


def test_register_worker_takes_host_names_and_ipv6(guarded_coordinator):
    registry = cpb_grpc.WorkerRegistryServiceStub(guarded_coordinator)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    for address in ("worker-0.workers.svc.cluster.local:50051", "[::1]:50051"):
        reply = registry.RegisterWorker(cpb.RegisterWorkerRequest(address=address),
                                        timeout=10, metadata=auth)
        assert reply.lease_seconds > 0
        registry.UnregisterWorker(cpb.UnregisterWorkerRequest(address=address), timeout=10,
                                  metadata=auth)


def test_an_unknown_task_names_the_file_that_could_not_be_read(guarded_coordinator, tmp_path):
    """Before: NOT_FOUND said only "unknown task 'mytask'"."""
    (tmp_path / "mytask.yaml").write_bytes(b"task: mytask\ndoc_to_text: '\xff'\n")
    stub = cpb_grpc.EvaluationServiceStub(guarded_coordinator)
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
            model="sim", tasks=["mytask"], include_paths=[str(tmp_path)])), timeout=30,
            metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    details = err.value.details()
    assert details.startswith("spec.tasks: unknown task 'mytask'")
    assert f"1 task file(s) could not be read: {tmp_path / 'mytask.yaml'}: invalid YAML" \
        in details
