"""The coordinator's workers: one registry shared by every job.

Workers come from three sources, and may come and go:

- ``--workers host:port,...`` (``static``);
- a DNS name (:class:`~evalfleet.server.worker_address.DnsTarget`), re-resolved every
  ``dns_interval_s``; an address that disappears is drained;
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

Jobs choose workers by model (:mod:`evalfleet.server.worker_matching`). The registry owns
the workers' batch slots (:meth:`WorkerRegistry.acquire_slot`, :meth:`~WorkerRegistry.release_slot`,
:meth:`~WorkerRegistry.mark_failed`): the scheduler never edits a worker's counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from evalfleet.common.errors import NotFoundError, UnavailableError
from evalfleet.common.logging import get_logger
from evalfleet.common.security import ClientSecurity
from evalfleet.server.worker_address import DnsTarget, parse_host_port
from evalfleet.server.worker_matching import select_workers
from evalfleet.server.worker_record import (
    CONNECTING,
    DOWN,
    DRAINING,
    READY,
    WORKER_CHANNEL_OPTIONS,
    Worker,
)
from evalfleet.server.workers import WorkerClient
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

log = get_logger("registry")

#: Seconds a worker may take to answer GetModelInfo when a job starts (a remote backend may
#: re-probe its server's logprobs first, in at most 5 s).
MODEL_INFO_TIMEOUT_S = 15.0
HEALTH_SERVICE = "evalfleet.v1.InferenceService"


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

    # -- batch slots ---------------------------------------------------------------------------

    def acquire_slot(self, worker: Worker, job_id: str) -> None:
        """A batch of ``job_id`` was sent to ``worker``: one of its slots is taken."""
        worker.in_flight += 1
        worker.jobs_in_flight[job_id] = worker.jobs_in_flight.get(job_id, 0) + 1

    def release_slot(self, worker: Worker, job_id: str) -> None:
        """The batch's call returned: its slot is free again (a draining worker whose last
        batch returned is removed)."""
        worker.in_flight -= 1
        worker.jobs_in_flight[job_id] -= 1
        if worker.jobs_in_flight[job_id] <= 0:
            del worker.jobs_in_flight[job_id]
        self._maybe_remove(worker)

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
        """The READY workers a new job runs on (see :func:`worker_matching.select_workers`)."""
        return await select_workers(self, backend=backend, model_args=model_args,
                                    fingerprint=fingerprint, allowed=allowed, wait_s=wait_s)

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
