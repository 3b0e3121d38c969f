"""``evalfleet serve``'s fleet flags: discovery, registration, scheduling, access, TLS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
from typing import Any

import grpc

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.logging import get_logger
from evalfleet.common.security import TOKEN_ENV, ClientSecurity, ServerSecurity

log = get_logger("serve")


def add_server_security_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--auth_token_file", default=None,
                   help="require 'authorization: Bearer <token>' on every call (health stays "
                        "open); the token is this file's content")
    p.add_argument("--tls_cert", default=None, help="serve TLS with this PEM certificate chain")
    p.add_argument("--tls_key", default=None, help="the certificate's PEM private key")
    p.add_argument("--tls_client_ca", default=None,
                   help="mutual TLS: require client certificates signed by this PEM CA")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port (0-65535; 0: a free one)")
    return int(text)


def add_metrics_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics_port", type=_port, default=None, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST: --host; "
                        "0: a free port, logged)")


def served_metrics(args: argparse.Namespace, service: str) -> tuple[Any, Any]:
    """(metrics, exporter) of ``service`` ("worker" or "coordinator") served on
    ``--metrics_port`` from now on (a port in use is reported before a model loads), or
    (None, None) without the flag."""
    if args.metrics_port is None:
        return None, None
    from evalfleet.common.metrics import CoordinatorMetrics, WorkerMetrics, serve_metrics

    metrics = WorkerMetrics() if service == "worker" else CoordinatorMetrics()
    exporter = serve_metrics(metrics.registry, args.host, args.metrics_port)
    log.info("metrics_served", url=exporter.url)
    return metrics, exporter


def add_worker_flags(w: argparse.ArgumentParser) -> None:
    add_server_security_flags(w)
    add_metrics_flag(w)
    w.add_argument("--register", default=None, metavar="HOST:PORT",
                   help="register with this coordinator and keep the registration alive with "
                        "heartbeats")
    w.add_argument("--advertise_address", default=None, metavar="HOST:PORT",
                   help="address the coordinator should call (default: --host:--port, or this "
                        "host's name when listening on every interface)")
    w.add_argument("--coordinator_auth_token_file", default=None,
                   help="token for the coordinator (default: --auth_token_file)")
    w.add_argument("--coordinator_tls_ca", default=None,
                   help="PEM CA of the coordinator's TLS certificate (enables TLS)")
    w.add_argument("--coordinator_tls_cert", default=None, help="client certificate (mTLS)")
    w.add_argument("--coordinator_tls_key", default=None, help="client key (mTLS)")


def add_coordinator_flags(c: argparse.ArgumentParser) -> None:
    add_server_security_flags(c)
    add_metrics_flag(c)
    c.add_argument("--worker_auth_token_file", default=None,
                   help="token the coordinator sends to workers (default: --auth_token_file)")
    c.add_argument("--worker_tls_ca", default=None,
                   help="PEM CA of the workers' TLS certificates (enables TLS to workers)")
    c.add_argument("--worker_tls_cert", default=None, help="client certificate for workers (mTLS)")
    c.add_argument("--worker_tls_key", default=None, help="client key for workers (mTLS)")
    c.add_argument("--worker_tls_server_name", default=None,
                   help="name expected in the workers' certificates, when not their host")
    c.add_argument("--batch_items", type=int, default=512,
                   help="most requests in one batch (batches are also sized by time)")
    c.add_argument("--batch_seconds", type=float, default=2.0,
                   help="worker time one batch should take: answers reach the store this often")
    c.add_argument("--max_attempts", type=int, default=3, help="tries per request")
    c.add_argument("--health_interval", type=float, default=2.0,
                   help="seconds between worker health checks")
    c.add_argument("--registration_lease", type=float, default=15.0,
                   help="seconds a registered worker stays without a heartbeat")
    c.add_argument("--dns_interval", type=float, default=10.0,
                   help="seconds between re-resolutions of dns: worker names")
    c.add_argument("--job_lease", type=float, default=30.0, metavar="SECONDS",
                   help="seconds this coordinator's claim on a job lasts without renewal (renewed "
                        "every third): a killed coordinator's jobs are taken over by another, or "
                        "by it restarted, this long after it died")
    c.add_argument("--no_worker_timeout", type=float, default=600.0,
                   help="fail a job that has had no worker for this many seconds")
    c.add_argument("--allow_include_paths", action="store_true",
                   help="let clients name task directories on this machine (spec.include_paths)")
    c.add_argument("--allow_spec_workers", action="store_true",
                   help="let clients name worker addresses (spec.worker_addresses)")
    c.add_argument("--allow_remote_code", action="store_true",
                   help="let clients set trust_remote_code in model_args")
    c.add_argument("--allow_weak_sandbox", action="store_true",
                   help="run code tasks even without bubblewrap (under unshare or nothing: "
                        "programs can then read, write and kill what this user can)")
    c.add_argument("--max_message_bytes", type=int, default=4 * 1024 * 1024,
                   help="largest request message accepted")
    c.add_argument("--max_spec_bytes", type=int, default=1024 * 1024)
    c.add_argument("--max_tasks", type=int, default=2000, help="leaf tasks per job")
    c.add_argument("--max_limit", type=float, default=1_000_000, help="largest spec.limit")
    c.add_argument("--max_requests", type=int, default=20_000_000,
                   help="model requests one job may plan")


def coordinator_options(args: argparse.Namespace):
    """The ``CoordinatorOptions`` the flags describe."""
    from evalfleet.server.access import AccessPolicy
    from evalfleet.server.scheduler import SchedulerConfig
    from evalfleet.server.service import CoordinatorOptions

    security = ServerSecurity.from_files(token_file=args.auth_token_file, tls_cert=args.tls_cert,
                                         tls_key=args.tls_key, tls_client_ca=args.tls_client_ca)
    worker_security = ClientSecurity.from_files(
        token_file=args.worker_auth_token_file or args.auth_token_file,
        ca=args.worker_tls_ca, cert=args.worker_tls_cert, key=args.worker_tls_key,
        server_name=args.worker_tls_server_name, flag_prefix="--worker_")
    for name in ("batch_items", "max_attempts"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name}: must be >= 1")
    if not args.job_lease >= 0.5:
        raise InvalidArgumentError("--job_lease: must be >= 0.5 seconds")
    return CoordinatorOptions(
        workers=[w.strip() for w in args.workers.split(",") if w.strip()],
        data_dir=args.data_dir, include_paths=args.include_path,
        scheduler=SchedulerConfig(max_batch_items=args.batch_items,
                                  batch_seconds=args.batch_seconds,
                                  max_attempts=args.max_attempts,
                                  no_worker_timeout_s=args.no_worker_timeout),
        policy=AccessPolicy(allow_include_paths=args.allow_include_paths,
                            allow_spec_workers=args.allow_spec_workers,
                            allow_remote_code=args.allow_remote_code,
                            allow_weak_sandbox=args.allow_weak_sandbox,
                            max_spec_bytes=args.max_spec_bytes, max_tasks=args.max_tasks,
                            max_limit=args.max_limit, max_requests=args.max_requests),
        security=security, worker_security=worker_security,
        health_interval_s=args.health_interval, lease_s=args.registration_lease,
        dns_interval_s=args.dns_interval, max_message_bytes=args.max_message_bytes,
        job_lease_s=args.job_lease, claim_interval_s=min(5.0, args.job_lease / 3))


def worker_security(args: argparse.Namespace) -> ServerSecurity:
    return ServerSecurity.from_files(token_file=args.auth_token_file, tls_cert=args.tls_cert,
                                     tls_key=args.tls_key, tls_client_ca=args.tls_client_ca)


def advertised_address(args: argparse.Namespace, port: int) -> str:
    """Where the coordinator should call this worker."""
    if args.advertise_address:
        return args.advertise_address
    host = args.host
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = os.environ.get("POD_IP") or socket.gethostbyname(socket.gethostname())
    return f"{host}:{port}"


class Registration:
    """Keeps a worker registered with a coordinator: RegisterWorker, then Heartbeat every
    third of the lease; registers again when the coordinator has forgotten it (restart)."""

    def __init__(self, coordinator: str, address: str, security: ClientSecurity) -> None:
        self.coordinator = coordinator
        self.address = address
        self.security = security
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registration")

    async def _run(self) -> None:
        from evalfleet.v1 import coordinator_pb2 as cpb
        from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

        md = self.security.metadata
        async with self.security.channel(self.coordinator) as channel:
            stub = cpb_grpc.WorkerRegistryServiceStub(channel)
            registered, interval = False, 2.0
            while True:
                try:
                    if not registered:
                        reply = await stub.RegisterWorker(
                            cpb.RegisterWorkerRequest(address=self.address), timeout=10,
                            metadata=md)
                        interval = max(0.2, reply.heartbeat_interval_seconds)
                        registered = True
                        log.info("registered", coordinator=self.coordinator,
                                 address=self.address, lease_s=reply.lease_seconds)
                    else:
                        await stub.Heartbeat(cpb.HeartbeatRequest(address=self.address),
                                             timeout=10, metadata=md)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        registered = False
                        continue
                    log.warning("registration_failed", coordinator=self.coordinator,
                                code=exc.code().name, details=exc.details())
                    registered = False
                    interval = 2.0
                await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Stop heartbeats and unregister (best effort)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        from evalfleet.v1 import coordinator_pb2 as cpb
        from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

        with contextlib.suppress(grpc.aio.AioRpcError):
            async with self.security.channel(self.coordinator) as channel:
                await cpb_grpc.WorkerRegistryServiceStub(channel).UnregisterWorker(
                    cpb.UnregisterWorkerRequest(address=self.address), timeout=5,
                    metadata=self.security.metadata)


def registration(args: argparse.Namespace, port: int) -> Registration | None:
    """The worker's registration with ``--register``, if given."""
    if not args.register:
        return None
    token = None if (args.coordinator_auth_token_file or args.auth_token_file) else \
        os.environ.get(TOKEN_ENV)
    security = ClientSecurity.from_files(
        token_file=args.coordinator_auth_token_file or args.auth_token_file, token=token,
        ca=args.coordinator_tls_ca, cert=args.coordinator_tls_cert,
        key=args.coordinator_tls_key, flag_prefix="--coordinator_")
    return Registration(args.register, advertised_address(args, port), security)
