"""The coordinator's workers: one registry shared by every job.

Workers come from three sources, and may come and go:

- ``--workers host:port,...`` (``static``);
- a DNS name (``dns:///NAME:PORT``, or ``dns://NAMESERVER[:PORT]/NAME:PORT`` to ask one server),
  re-resolved every ``dns_interval_s``: every address it resolves to is a worker (a Kubernetes
  headless service gives one per ready pod); an address that disappears is drained;
- workers that register themselves (``evalfleet serve worker --register``) under a lease they
  renew with heartbeats; one whose lease runs out is drained.

Each worker is watched: its gRPC health (``grpc.health.v1``, service
``evalfleet.v1.InferenceService``) is checked every ``health_interval_s`` and its model info is
fetched whenever it becomes healthy. A worker that fails (unreachable, NOT_SERVING, a batch past
its deadline, credentials refused) is DOWN and gets no batches; it comes back, READY, when its
health check and ``GetModelInfo`` pass again (after a back-off that grows with consecutive
failures, so a worker that fails every batch is tried less and less often). An error the worker
itself answers for a batch (a status from its handler: INTERNAL, INVALID_ARGUMENT, ...) is the
batch's, not the worker's: it is counted and shown, and the worker stays READY
(:meth:`WorkerRegistry.note_batch_error`), so no client's requests can take a worker out.

Jobs choose workers by model (see :func:`worker_matches`): a job is bound to one
(backend, fingerprint) and runs on every READY worker serving it, including ones that join
later.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from evalfleet.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from evalfleet.common.logging import get_logger
from evalfleet.common.rpc import CHANNEL_OPTIONS
from evalfleet.common.security import ClientSecurity
from evalfleet.server.workers import WorkerClient
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

log = get_logger("registry")

#: Seconds a worker may take to answer GetModelInfo when a job starts (a remote backend may
#: re-probe its server's logprobs first, in at most 5 s).
MODEL_INFO_TIMEOUT_S = 15.0
CONNECTING = cpb.WORKER_STATE_CONNECTING
READY = cpb.WORKER_STATE_READY
DOWN = cpb.WORKER_STATE_DOWN
DRAINING = cpb.WORKER_STATE_DRAINING
HEALTH_SERVICE = "evalfleet.v1.InferenceService"
#: Channels to workers reconnect within seconds of a worker coming back (gRPC's default
#: back-off grows to two minutes while a worker is down, e.g. loading its model).
WORKER_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
#: Seconds of answers a worker's throughput figure covers.
THROUGHPUT_WINDOW_S = 30.0


def parse_host_port(address: str, field_name: str) -> str:
    """``address`` if it is host:port: a host name or IPv4 address (letters, digits, ``.-_``) or
    an IPv6 address in brackets ([::1]:port), and a port 1-65535; INVALID_ARGUMENT naming the
    field otherwise."""
    host, sep, port = address.rpartition(":")
    valid = bool(sep) and re.fullmatch(r"[0-9]{1,5}", port) is not None \
        and 0 < int(port) < 65536
    if valid and host.startswith("[") and host.endswith("]"):
        try:
            valid = ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            valid = False
    elif valid:
        valid = re.fullmatch(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})", host) is not None
    if not valid:
        raise InvalidArgumentError(
            f"{field_name}: {address[:200]!r} is not host:port (a host name, IPv4 address or "
            "[IPv6] address, and a port 1-65535)")
    return address


def join_host_port(host: str, port: int) -> str:
    """host:port, with brackets around an IPv6 host."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    return f"{host}:{port}"


@dataclass
class Worker:
    """One worker as the registry sees it."""

    address: str
    source: str
    client: WorkerClient
    state: int = CONNECTING
    info: ipb.ModelInfo | None = None
    state_since: float = field(default_factory=time.time)
    last_error: str = ""
    last_error_at: float | None = None  # wall clock of last_error
    in_flight: int = 0
    jobs_in_flight: dict[str, int] = field(default_factory=dict)
    requests_answered: int = 0
    api_concurrency: int = 0  # remote backends: the limiter's level in its last batch
    throttled_responses: int = 0  # remote backends: 429/503/timeouts, summed over batches
    batches_done: int = 0
    batches_failed: int = 0
    consecutive_failures: int = 0
    retry_at: float = 0.0  # monotonic: not checked again before this after a failure
    lease_until: float | None = None  # wall clock, registered workers
    refs: int = 0  # jobs naming it in spec.worker_addresses (source "spec")
    recent: deque[tuple[float, int]] = field(default_factory=deque)
    monitor: asyncio.Task | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def model_key(self) -> tuple[str, str] | None:
        """(backend, fingerprint) of its model; None before it answered."""
        return (self.info.backend, self.info.fingerprint) if self.info is not None else None

    @property
    def max_in_flight(self) -> int:
        """Batches kept in flight: what it computes at once, plus one queued behind."""
        concurrent = self.info.capabilities.max_concurrent_batches if self.info else 1
        limit = max(1, concurrent) + 1
        # After a failure, one batch at a time until a batch succeeds again.
        return 1 if self.consecutive_failures else limit

    @property
    def free_slots(self) -> int:
        return self.max_in_flight - self.in_flight if self.state == READY else 0

    def throughput(self, now: float | None = None) -> float:
        """Requests answered per second over the last ``THROUGHPUT_WINDOW_S``."""
        now = time.monotonic() if now is None else now
        while self.recent and self.recent[0][0] < now - THROUGHPUT_WINDOW_S:
            self.recent.popleft()
        if not self.recent:
            return 0.0
        span = max(now - self.recent[0][0], 1.0)
        return sum(n for _, n in self.recent) / span

    def to_proto(self) -> cpb.WorkerStatus:
        status = cpb.WorkerStatus(
            address=self.address, source=self.source, state=self.state,
            in_flight_batches=self.in_flight, max_in_flight_batches=self.max_in_flight,
            requests_per_second=round(self.throughput(), 3),
            requests_answered=self.requests_answered, batches_done=self.batches_done,
            batches_failed=self.batches_failed, last_error=self.last_error,
            api_concurrency=self.api_concurrency, throttled_responses=self.throttled_responses,
            evaluations=sorted(j for j, n in self.jobs_in_flight.items() if n > 0))
        status.state_since.FromNanoseconds(int(self.state_since * 1e9))
        if self.last_error_at is not None:
            status.last_error_at.FromNanoseconds(int(self.last_error_at * 1e9))
        if self.info is not None:
            status.backend = self.info.backend
            status.model_name = self.info.model_name
            status.fingerprint = self.info.fingerprint
        if self.lease_until is not None:
            status.lease_expires_at.FromNanoseconds(int(self.lease_until * 1e9))
        return status


def _same_model_name(wanted: str, served: str) -> bool:
    """Whether two model names or paths name the same model: equal, or one is the other's
    trailing path components (``models/smollm2`` and ``/srv/models/smollm2``)."""
    a, b = wanted.rstrip("/"), served.rstrip("/")
    return bool(a and b) and (a == b or a.endswith("/" + b) or b.endswith("/" + a))


def worker_matches(info: ipb.ModelInfo, *, backend: str, model_args: dict[str, Any],
                   fingerprint: str) -> bool:
    """Whether a worker serves the model a job asks for.

    - ``fingerprint`` (``spec.model_fingerprint``), when given, decides alone: the worker's
      fingerprint equals it or starts with it (``sha256:`` optional).
    - Otherwise the backend must match (``spec.model``: equal, or a prefix of the worker's) and,
      when ``model_args`` names the model (``pretrained``, or ``model`` for API backends), the
      worker's own ``pretrained``/``model`` (or model name) must name the same one.
    """
    if fingerprint:
        wanted = fingerprint.removeprefix("sha256:")
        return info.fingerprint.removeprefix("sha256:").startswith(wanted)
    if backend and not info.backend.startswith(backend):
        return False
    name = str(model_args.get("pretrained") or model_args.get("model") or "")
    if not name:
        return True
    served = [info.model_args.get("pretrained", ""), info.model_args.get("model", ""),
              info.model_name]
    return any(_same_model_name(name, s) for s in served if s)


def describe_worker(worker: Worker) -> str:
    """'address (STATE, backend model fingerprint…)' for error messages."""
    state = cpb.WorkerState.Name(worker.state).removeprefix("WORKER_STATE_")
    parts = [state]
    if worker.info is not None:
        parts.append(f"{worker.info.backend} {worker.info.model_name} "
                     f"{worker.info.fingerprint[:19]}")
    if worker.last_error and worker.state != READY:
        parts.append(worker.last_error)
    return f"{worker.address} ({', '.join(parts)})"


@dataclass(frozen=True)
class DnsTarget:
    """A DNS name whose addresses are workers: ``dns:[//NAMESERVER[:PORT]/]NAME:PORT``."""

    name: str
    port: int
    nameserver: str | None = None
    nameserver_port: int = 53

    @classmethod
    def parse(cls, text: str, field_name: str = "--workers") -> DnsTarget:
        rest = text.removeprefix("dns:")
        nameserver, ns_port = None, 53
        if rest.startswith("//"):
            authority, slash, rest = rest[2:].partition("/")
            if not slash:
                raise InvalidArgumentError(f"{field_name}: '{text}': expected "
                                           "dns://[NAMESERVER[:PORT]]/NAME:PORT")
            if authority:
                host, sep, port = authority.rpartition(":")
                if sep and port.isdigit():
                    nameserver, ns_port = host.strip("[]"), int(port)
                else:
                    nameserver = authority.strip("[]")
        name, sep, port = rest.rpartition(":")
        if not sep or not name or not port.isdigit():
            raise InvalidArgumentError(f"{field_name}: '{text}': give the workers' port, as in "
                                       "dns:///workers.ns.svc.cluster.local:50061")
        return cls(name, int(port), nameserver, ns_port)

    @property
    def source(self) -> str:
        return f"dns:{self.name}"

    async def resolve(self) -> set[str]:
        """The worker addresses the name resolves to now."""
        if self.nameserver is None:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(self.name, self.port, type=0,
                                           proto=6)  # TCP, either family
            return {join_host_port(i[4][0], self.port) for i in infos}
        import dns.asyncresolver
        import dns.resolver

        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.nameserver]
        resolver.port = self.nameserver_port
        resolver.lifetime = 5.0
        found: set[str] = set()
        for rdtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(self.name, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            found.update(join_host_port(r.address, self.port) for r in answer)
        return found


class WorkerRegistry:
    """Every worker the coordinator knows, their health and their model."""

    def __init__(self, security: ClientSecurity | None = None, *,
                 health_interval_s: float = 2.0, health_timeout_s: float = 5.0,
                 lease_s: float = 15.0, dns_interval_s: float = 10.0,
                 max_backoff_s: float = 30.0) -> None:
        self.security = security or ClientSecurity()
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.lease_s = lease_s
        self.dns_interval_s = dns_interval_s
        self.max_backoff_s = max_backoff_s
        self.workers: dict[str, Worker] = {}
        self._listeners: list[Callable[[], None]] = []
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._closed = False

    # -- notifications ------------------------------------------------------------------------

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously) whenever a worker's state or slots change."""
        self._listeners.append(callback)

    def changed(self) -> None:
        """Tell listeners that workers changed (states, slots)."""
        self._changed.set()
        for callback in self._listeners:
            callback()

    async def wait_changed(self, timeout_s: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    # -- membership ---------------------------------------------------------------------------

    def add(self, address: str, source: str) -> Worker:
        """Add a worker (idempotent: a known address keeps its state; a draining one stays)."""
        worker = self.workers.get(address)
        if worker is not None:
            if worker.state == DRAINING and source == worker.source:
                self._set_state(worker, CONNECTING, "")
                worker.wake.set()
            return worker
        worker = Worker(address, source,
                        WorkerClient(address, self.security, options=WORKER_CHANNEL_OPTIONS))
        self.workers[address] = worker
        worker.monitor = asyncio.create_task(self._monitor(worker), name=f"health-{address}")
        log.info("worker_added", worker=address, source=source)
        self.changed()
        return worker

    def add_static(self, addresses: Iterable[str]) -> None:
        """``--workers`` entries: host:port, or dns:... targets re-resolved in the background."""
        for entry in addresses:
            if entry.startswith("dns:"):
                target = DnsTarget.parse(entry)
                self._tasks.append(asyncio.create_task(self._watch_dns(target),
                                                       name=f"dns-{target.name}"))
            else:
                self.add(parse_host_port(entry, "--workers"), "static")

    def drain(self, address: str, reason: str) -> None:
        """No new batches; removed once its batches in flight have returned."""
        worker = self.workers.get(address)
        if worker is None or worker.state == DRAINING:
            return
        self._set_state(worker, DRAINING, reason)
        worker.wake.set()
        self._maybe_remove(worker)

    def _maybe_remove(self, worker: Worker) -> None:
        if worker.state == DRAINING and worker.in_flight == 0 \
                and self.workers.get(worker.address) is worker:
            del self.workers[worker.address]
            if worker.monitor is not None:
                worker.monitor.cancel()
            asyncio.get_running_loop().create_task(worker.client.close())
            log.info("worker_removed", worker=worker.address, reason=worker.last_error)
            self.changed()

    def acquire(self, addresses: Iterable[str]) -> None:
        """Workers named by a job's spec: added (source "spec") while some job names them."""
        for address in addresses:
            worker = self.add(address, "spec")
            worker.refs += 1

    def release(self, addresses: Iterable[str]) -> None:
        for address in addresses:
            worker = self.workers.get(address)
            if worker is None:
                continue
            worker.refs = max(0, worker.refs - 1)
            if worker.refs == 0 and worker.source == "spec":
                self.drain(address, "no job names it any more")

    # -- self-registration --------------------------------------------------------------------

    def register(self, address: str) -> float:
        """Add or renew a registered worker; returns the lease in seconds."""
        parse_host_port(address, "address")
        worker = self.workers.get(address)
        if worker is None or worker.state == DRAINING and worker.source == "registered":
            worker = self.add(address, "registered")
        if worker.source == "registered":
            worker.lease_until = time.time() + self.lease_s
        return self.lease_s

    def heartbeat(self, address: str) -> float:
        """Renew a registered worker's lease; NOT_FOUND when it is not (or no longer) known."""
        worker = self.workers.get(address)
        if worker is None or worker.state == DRAINING:
            raise NotFoundError(f"worker {address} is not registered here; call RegisterWorker")
        if worker.source == "registered":
            worker.lease_until = time.time() + self.lease_s
        return self.lease_s  # a worker also listed by --workers or DNS needs no lease

    def unregister(self, address: str) -> None:
        worker = self.workers.get(address)
        if worker is None or worker.source != "registered":
            raise NotFoundError(f"worker {address} is not registered here")
        self.drain(address, "unregistered")

    # -- health -------------------------------------------------------------------------------

    def _set_state(self, worker: Worker, state: int, error: str) -> None:
        if state != worker.state:
            log.info("worker_state", worker=worker.address,
                     state=cpb.WorkerState.Name(state).removeprefix("WORKER_STATE_"),
                     error=error or None)
            worker.state = state
            worker.state_since = time.time()
        if state in (DOWN, DRAINING):
            worker.last_error = error
            worker.last_error_at = time.time()
        self.changed()

    def mark_failed(self, worker: Worker, reason: str) -> None:
        """A batch failed on the worker: DOWN until a later health check passes, after a
        back-off that doubles with each consecutive failure."""
        worker.batches_failed += 1
        worker.consecutive_failures += 1
        backoff = min(self.max_backoff_s, 0.5 * 2 ** (worker.consecutive_failures - 1))
        worker.retry_at = time.monotonic() + backoff
        if worker.state != DRAINING:
            self._set_state(worker, DOWN, reason)
        worker.wake.set()

    def note_batch_error(self, worker: Worker, reason: str) -> None:
        """A live worker answered a batch with an error of its requests: counted and shown as
        its last error; its state is left to its health check."""
        worker.batches_failed += 1
        worker.last_error = reason
        worker.last_error_at = time.time()

    def mark_succeeded(self, worker: Worker, requests: int,
                       cost: ipb.BatchCost | None = None) -> None:
        """A batch answered: counted, and a remote backend's concurrency and throttling."""
        if cost is not None:
            worker.throttled_responses += cost.throttled_responses
            if cost.concurrency:
                worker.api_concurrency = cost.concurrency
        worker.consecutive_failures = 0
        worker.batches_done += 1
        worker.requests_answered += requests
        worker.recent.append((time.monotonic(), requests))

    async def _check(self, worker: Worker) -> None:
        health = health_pb2_grpc.HealthStub(worker.client.channel)
        try:
            response = await health.Check(health_pb2.HealthCheckRequest(service=HEALTH_SERVICE),
                                          timeout=self.health_timeout_s)
        except grpc.aio.AioRpcError as exc:
            self._set_state(worker, DOWN, f"{exc.code().name}: {exc.details()}")
            return
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            self._set_state(worker, DOWN, "health: " +
                            health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
            return
        if worker.state == READY:
            return
        if await self._fetch_info(worker, self.health_timeout_s):
            self._set_state(worker, READY, "")

    async def _fetch_info(self, worker: Worker, timeout_s: float) -> bool:
        """GetModelInfo into ``worker.info``; a worker that does not answer is DOWN (False)."""
        try:
            worker.info = await worker.client.model_info(timeout_s)
        except UnavailableError as exc:
            self._set_state(worker, DOWN, exc.message)
            return False
        return True

    async def _monitor(self, worker: Worker) -> None:
        while not self._closed:
            if worker.state == DRAINING:
                await worker.wake.wait()
                worker.wake.clear()
                continue
            if worker.lease_until is not None and time.time() > worker.lease_until:
                self.drain(worker.address, "registration lease expired")
                continue
            wait = worker.retry_at - time.monotonic()
            if wait <= 0:
                try:
                    await self._check(worker)
                except Exception:  # noqa: BLE001 - keep watching whatever happens
                    log.exception("health_check_crashed", worker=worker.address)
                wait = self.health_interval_s
            worker.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.wake.wait(), max(wait, 0.05))

    async def _watch_dns(self, target: DnsTarget) -> None:
        while not self._closed:
            try:
                found = await target.resolve()
            except Exception as exc:  # noqa: BLE001 - keep the last answer, try again
                log.warning("dns_resolve_failed", name=target.name, error=str(exc))
            else:
                for address in sorted(found):
                    self.add(address, target.source)
                for worker in list(self.workers.values()):
                    if worker.source == target.source and worker.address not in found:
                        self.drain(worker.address, f"no longer in DNS {target.name}")
            await asyncio.sleep(self.dns_interval_s)

    # -- choosing workers ---------------------------------------------------------------------

    def serving(self, model_key: tuple[str, str],
                allowed: set[str] | None = None) -> list[Worker]:
        """READY workers of a model (only ``allowed`` addresses when given)."""
        return [w for w in self.workers.values() if w.state == READY and w.model_key == model_key
                and (allowed is None or w.address in allowed)]

    async def select(self, *, backend: str, model_args: dict[str, Any], fingerprint: str,
                     allowed: set[str] | None, wait_s: float) -> list[Worker]:
        """The READY workers a new job runs on; they all serve one (backend, fingerprint).

        Waits up to ``wait_s`` while candidate workers are still connecting (a job is never
        placed on part of the fleet while the rest is still unknown). UNAVAILABLE when
        no worker is up; FAILED_PRECONDITION when none serves the model asked for, or several
        models match (then name one with spec.model_fingerprint).
        """
        deadline = time.monotonic() + wait_s
        while True:
            candidates = [w for w in self.workers.values()
                          if allowed is None or w.address in allowed]
            matched = [w for w in candidates if w.state == READY and w.info is not None
                       and worker_matches(w.info, backend=backend, model_args=model_args,
                                          fingerprint=fingerprint)]
            keys = {w.model_key for w in matched}
            if len(keys) > 1:
                detail = "; ".join(describe_worker(w) for w in matched)
                raise FailedPreconditionError(
                    f"workers of several models match the job: {detail}. Name one with "
                    "spec.model_fingerprint (--model_fingerprint), or give model_args "
                    "pretrained=NAME")
            # A worker still connecting may serve the model too (or another that matches):
            # decide once every candidate has answered, or at the deadline.
            connecting = any(w.state == CONNECTING for w in candidates)
            if matched and (not connecting or time.monotonic() >= deadline):
                return matched
            if time.monotonic() >= deadline or (
                    candidates and all(w.state == READY for w in candidates)):
                break
            await self.wait_changed(min(0.5, max(0.01, deadline - time.monotonic())))
        want = (f"model_fingerprint {fingerprint}" if fingerprint else
                f"backend '{backend or 'any'}'" + (
                    f" with {model_args.get('pretrained') or model_args.get('model')}"
                    if model_args.get("pretrained") or model_args.get("model") else ""))
        if not candidates:
            raise UnavailableError(
                "no inference workers: start the coordinator with --workers host:port (or a "
                "dns:/// name), or start workers with `evalfleet serve worker --register "
                "COORDINATOR`")
        listing = "; ".join(describe_worker(w) for w in sorted(candidates,
                                                               key=lambda w: w.address))
        if not any(w.state == READY for w in candidates):
            raise UnavailableError(f"no worker is up for {want}: {listing}")
        raise FailedPreconditionError(f"no worker serves {want}: {listing}")

    async def refresh_info(self, workers: list[Worker]) -> None:
        """Fetch the workers' model info again (GetModelInfo; a remote backend re-probes its
        server there when its last probe is old). A worker that does not answer is DOWN."""
        timeout_s = max(self.health_timeout_s, MODEL_INFO_TIMEOUT_S)
        await asyncio.gather(*(self._fetch_info(w, timeout_s) for w in workers))
        self.changed()

    def list(self) -> list[cpb.WorkerStatus]:
        return [w.to_proto() for w in sorted(self.workers.values(), key=lambda w: w.address)]

    async def close(self) -> None:
        self._closed = True  # ends the loops even if a cancel is swallowed (see Scheduler.close)
        tasks = [*self._tasks, *(w.monitor for w in self.workers.values() if w.monitor)]
        for worker in self.workers.values():
            worker.wake.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(w.client.close() for w in self.workers.values()),
                             return_exceptions=True)
