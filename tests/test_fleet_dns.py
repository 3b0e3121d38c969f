"""DNS discovery against a real DNS server on loopback: one name resolving to several loopback
addresses (127.0.0.2-4, one worker each on the same port, as a Kubernetes headless service gives
one address per pod), re-resolved as the answer changes."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import grpc
import pytest
from conftest import REPO_ROOT

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

sys.path.insert(0, str(REPO_ROOT / "bench"))
from simworker import Script, start_simulated_worker  # noqa: E402

NAME = "workers.evalfleet.test."


class LoopbackDns(asyncio.DatagramProtocol):
    """Answers A queries for ``name`` (default ``NAME``) with ``addresses`` (NXDOMAIN for other
    names)."""

    def __init__(self, addresses: list[str], name: str = NAME) -> None:
        self.addresses = addresses
        self.name = name.rstrip(".") + "."
        self.queries = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        self.queries += 1
        if question.name.to_text().lower() != self.name:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A and self.addresses:
            response.answer.append(dns.rrset.from_text_list(self.name, 1, "IN", "A",
                                                            list(self.addresses)))
        self.transport.sendto(response.to_wire(), addr)


def _shared_port(hosts: list[str]) -> int:
    for _ in range(20):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise AssertionError("no port free on every loopback address")


def test_workers_from_a_dns_name_follow_its_answers(background_loop, data_dir):
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = _shared_port(hosts)
    workers = [background_loop.run(start_simulated_worker(Script(), host=h, port=port))[0]
               for h in hosts]
    dns = LoopbackDns(list(hosts))

    async def serve_dns():
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: dns, local_addr=("127.0.0.1", 0))
        return transport

    transport = background_loop.run(serve_dns())
    dns_port = transport.get_extra_info("sockname")[1]
    target = f"dns://127.0.0.1:{dns_port}/{NAME.rstrip('.')}:{port}"
    server, _ = background_loop.run(start_coordinator(options=CoordinatorOptions(
        workers=[target], data_dir=data_dir, health_interval_s=0.2, dns_interval_s=0.2)))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)

            def listed():
                return {w.address: w for w in stub.ListWorkers(cpb.ListWorkersRequest()).workers}

            def wait(predicate, timeout=20.0):
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if predicate(listed()):
                        return
                    time.sleep(0.05)
                raise AssertionError(f"never held: {listed()}")

            every = {f"{h}:{port}" for h in hosts}
            wait(lambda ws: set(ws) == every
                 and all(w.state == cpb.WORKER_STATE_READY for w in ws.values()))
            assert {w.source for w in listed().values()} == {"dns:workers.evalfleet.test"}
            evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                model="sim", tasks=["arc_easy"], limit=10, bootstrap_iters=0)), timeout=60)
            for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id),
                                          timeout=60):
                pass
            final = stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id))
            assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
            # A pod leaves the service: its address leaves the registry.
            dns.addresses.remove("127.0.0.4")
            wait(lambda ws: set(ws) == every - {f"127.0.0.4:{port}"})
            # And comes back.
            dns.addresses.append("127.0.0.4")
            wait(lambda ws: set(ws) == every
                 and all(w.state == cpb.WORKER_STATE_READY for w in ws.values()))
            assert dns.queries >= 3
    finally:
        background_loop.run(server.stop(0.2))
        transport.close()
        for w in workers:
            background_loop.run(w.stop(0.2))


@pytest.mark.parametrize("text,expected", [
    ("dns:///workers.ns.svc.cluster.local:50061",
     ("workers.ns.svc.cluster.local", 50061, None, 53)),
    ("dns://10.96.0.10/workers:50061", ("workers", 50061, "10.96.0.10", 53)),
    ("dns://127.0.0.1:5353/a.b:1", ("a.b", 1, "127.0.0.1", 5353)),
    ("dns:workers:7", ("workers", 7, None, 53)),
])
def test_dns_target_forms(text, expected):
    from evalfleet.server.registry import DnsTarget

    t = DnsTarget.parse(text)
    assert (t.name, t.port, t.nameserver, t.nameserver_port) == expected


def test_dns_target_without_port_is_refused():
    from evalfleet.common.errors import InvalidArgumentError
    from evalfleet.server.registry import DnsTarget

    with pytest.raises(InvalidArgumentError, match="give the workers' port"):
        DnsTarget.parse("dns:///workers.ns.svc.cluster.local")
