"""Prometheus metrics of the coordinator and the workers (``serve ... --metrics_port``).

Each serving process keeps its metrics in a ``CollectorRegistry`` of its own (never
``prometheus_client``'s global default), so several servers in one process (the tests) never
collide. Names follow Prometheus' conventions: the ``evalfleet_`` prefix, base units (seconds,
bytes), ``_total`` counters (rate() gives the per-second figures); labels take only a few known
values (states, request kinds, gRPC status codes, reasons): never a job id or a worker address.

Counters and histograms are counted where things happen (one call each in the scheduler,
dispatch, runner and worker service); the gauges (jobs and workers by state, requests and
batches in flight, device memory) are read from the live objects at each scrape. A coordinator
that serves no metrics (the embedded one of ``evalfleet eval``) reports to
:class:`CoordinatorEvents`, which does nothing, and never imports ``prometheus_client``.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from evalfleet.common.errors import UnavailableError, status_for
from evalfleet.common.request_kind import RequestKind

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily, Metric

T = TypeVar("T")

#: Seconds buckets of a batch's round trip and of a worker's batch (sized to take ~2 s).
BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0,
                 300.0, 600.0)
#: Seconds buckets of a store write (a batch's answers, a job's results).
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                 10.0)
#: The job states a coordinator's jobs end in, and those they are in while it runs them.
ENDED_STATES = ("succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
#: Every worker state a coordinator's registry knows (each reported, 0 when none).
WORKER_STATES = ("connecting", "ready", "down", "draining")
#: Why a worker answered a request with an error, and the store writes timed.
ERROR_REASONS = ("cancelled", "retryable", "fatal")
STORE_OPS = ("answers", "results", "samples")


def state_label(enum_name: str) -> str:
    """``EVALUATION_STATE_RUNNING`` -> ``running``, ``WORKER_STATE_DOWN`` -> ``down``."""
    for prefix in ("EVALUATION_STATE_", "WORKER_STATE_"):
        enum_name = enum_name.removeprefix(prefix)
    return enum_name.lower()


class CoordinatorEvents:
    """What a coordinator reports as it runs jobs; this base ignores it all (every scheduler
    starts with one). :class:`CoordinatorMetrics` counts it."""

    def job_ended(self, enum_name: str) -> None:
        """A job this coordinator ran ended in ``enum_name`` (``EVALUATION_STATE_FAILED``)."""

    def dispatched(self, planned: int, from_store: int) -> None:
        """A job's dispatch looked its ``planned`` requests up: ``from_store`` were stored."""

    def answered(self, requests: int) -> None:
        """Requests answered by a worker were stored."""

    def batch_answered(self, kind: RequestKind, seconds: float) -> None:
        """A batch of ``kind`` came back answered after ``seconds``."""

    def batch_failed(self, reason: str) -> None:
        """A batch failed: a gRPC status name (any case), worker_down or malformed_response."""

    def item_errors(self, errors: Iterable[Any]) -> None:
        """Requests of a batch were answered with these ``ItemError`` messages."""

    def retried(self, requests: int) -> None:
        """Requests went back to their job's queue for another try."""

    async def timed_write(self, op: str, write: Awaitable[T]) -> T:
        """Await a store write (``op``: answers, results, samples)."""
        return await write


class CoordinatorMetrics(CoordinatorEvents):
    """A coordinator's metrics: jobs, requests, batches, retries and failures, store writes.

    :meth:`attach` makes it a running coordinator's and reports the runner's live state.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.jobs_finished = Counter(
            "evalfleet_jobs_finished", "Jobs this coordinator ran that ended, by final state",
            ["state"], registry=r)
        self.requests_planned = Counter(
            "evalfleet_requests_planned", "Distinct model requests of the jobs dispatched",
            registry=r)
        self.requests_from_store = Counter(
            "evalfleet_requests_from_store",
            "Requests of the jobs dispatched whose answer was already stored", registry=r)
        self.requests_answered = Counter(
            "evalfleet_requests_answered",
            "Requests answered by workers and stored (rate(): answers per second)", registry=r)
        self.request_retries = Counter(
            "evalfleet_request_retries", "Requests sent again after a failed try", registry=r)
        self.request_errors = Counter(
            "evalfleet_request_errors",
            "Requests a worker answered with an error (retryable, fatal, or cancelled by a "
            "stopping worker)", ["reason"], registry=r)
        self.batch_seconds = Histogram(
            "evalfleet_batch_duration_seconds",
            "Round trip of a batch answered by a worker, by request kind", ["kind"],
            buckets=BATCH_BUCKETS, registry=r)
        self.batch_failures = Counter(
            "evalfleet_batch_failures",
            "Batches that failed: the gRPC status of the call (lower case), worker_down or "
            "malformed_response", ["reason"], registry=r)
        self.store_write_seconds = Histogram(
            "evalfleet_store_write_duration_seconds",
            "Store writes: a batch's answers, a job's results or samples", ["op"],
            buckets=STORE_BUCKETS, registry=r)
        # Known label values start at 0, so that rate() and increase() see their first events.
        for state in ENDED_STATES:
            self.jobs_finished.labels(state)
        for reason in ERROR_REASONS:
            self.request_errors.labels(reason)
        for op in STORE_OPS:
            self.store_write_seconds.labels(op)

    # -- the coordinator's events ----------------------------------------------------------

    def job_ended(self, enum_name: str) -> None:
        self.jobs_finished.labels(state_label(enum_name)).inc()

    def dispatched(self, planned: int, from_store: int) -> None:
        self.requests_planned.inc(planned)
        self.requests_from_store.inc(from_store)

    def answered(self, requests: int) -> None:
        self.requests_answered.inc(requests)

    def batch_answered(self, kind: RequestKind, seconds: float) -> None:
        self.batch_seconds.labels(kind).observe(seconds)

    def batch_failed(self, reason: str) -> None:
        self.batch_failures.labels(reason.lower()).inc()

    def item_errors(self, errors: Iterable[Any]) -> None:
        """Counted as cancelled (by a stopping worker), retryable or fatal."""
        for error in errors:
            reason = "cancelled" if error.cancelled else \
                "retryable" if error.retryable else "fatal"
            self.request_errors.labels(reason).inc()

    def retried(self, requests: int) -> None:
        self.request_retries.inc(requests)

    async def timed_write(self, op: str, write: Awaitable[T]) -> T:
        """Await a store write, observing its duration under ``op``."""
        started = time.perf_counter()
        try:
            return await write
        finally:
            self.store_write_seconds.labels(op).observe(time.perf_counter() - started)

    # -- serving ------------------------------------------------------------------------------

    def attach(self, runner: Any) -> None:
        """Count ``runner``'s scheduler (and through it dispatch and the runner) into these
        metrics from now on, and report its jobs, requests in flight and workers at scrapes.
        Call it right after ``start_coordinator`` returns, before the loop runs anything."""
        runner.scheduler.metrics = self
        self.registry.register(_CoordinatorState(runner))


class _CoordinatorState:
    """The coordinator's gauges, read from the runner, scheduler and registry at a scrape
    (from the exporter's thread: only snapshots of their dicts are iterated)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def collect(self) -> Iterator[Metric]:
        from evalfleet.v1 import coordinator_pb2 as cpb  # common/ needs no protos elsewhere

        runner = self.runner
        jobs = collections.Counter(
            state_label(cpb.EvaluationState.Name(job.state))
            for job in list(runner.jobs.values()) if not job.lost)
        yield _gauge("evalfleet_jobs", "Jobs this coordinator runs now, by state", "state",
                     {s: jobs.get(s, 0) for s in ACTIVE_STATES})
        dispatches = list(runner.scheduler.jobs.values())
        yield _gauge("evalfleet_requests_in_flight",
                     "Requests in batches on their way to or back from workers", None,
                     {"": sum(d.in_flight_items for d in dispatches)})
        yield _gauge("evalfleet_requests_pending",
                     "Requests of running jobs waiting for a worker", None,
                     {"": sum(d.pending for d in dispatches)})
        workers = list(runner.registry.workers.values())
        yield _gauge("evalfleet_batches_in_flight", "Batches sent to workers and not returned",
                     None, {"": sum(w.in_flight for w in workers)})
        states = collections.Counter(state_label(cpb.WorkerState.Name(w.state))
                                     for w in workers)
        yield _gauge("evalfleet_workers", "Workers the coordinator knows, by state", "state",
                     {s: states.get(s, 0) for s in WORKER_STATES})


def _gauge(name: str, documentation: str, label: str | None,
           values: dict[str, float]) -> GaugeMetricFamily:
    from prometheus_client.core import GaugeMetricFamily

    if label is None:
        return GaugeMetricFamily(name, documentation, value=values[""])
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


#: The worker service's batch handlers and their request kinds.
WORKER_HANDLERS = {kind.rpc: kind for kind in RequestKind}


class WorkerMetrics:
    """A worker's metrics: batches, requests, positions and tokens (counters: rate() per
    second), batch and forward latency, queue depth, errors by status, device memory."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = registry if registry is not None else CollectorRegistry()
        labels = ["kind"]
        self.batches = Counter("evalfleet_worker_batches", "Batches answered, by request kind",
                               labels, registry=r)
        self.requests = Counter("evalfleet_worker_requests",
                                "Requests answered (an answer or an error each)", labels,
                                registry=r)
        self.request_errors = Counter("evalfleet_worker_request_errors",
                                      "Requests answered with an error", labels, registry=r)
        self.positions = Counter(
            "evalfleet_worker_positions",
            "Model positions computed (rate(): positions per second; local models)", labels,
            registry=r)
        self.prompt_tokens = Counter("evalfleet_worker_prompt_tokens",
                                     "Prompt tokens a remote API billed", labels, registry=r)
        self.completion_tokens = Counter("evalfleet_worker_completion_tokens",
                                         "Completion tokens a remote API billed", labels,
                                         registry=r)
        self.batch_seconds = Histogram(
            "evalfleet_worker_batch_duration_seconds",
            "A batch from its arrival to its answer (waiting for the model included)", labels,
            buckets=BATCH_BUCKETS, registry=r)
        self.forward_seconds = Histogram(
            "evalfleet_worker_forward_duration_seconds",
            "Seconds the backend computed a batch (its model forwards; remote backends: the "
            "API calls)", labels, buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("evalfleet_worker_queue_depth",
                                 "Batches received and not answered yet (computing or waiting)",
                                 registry=r)
        self.errors = Counter("evalfleet_worker_errors",
                              "Batch calls that failed, by gRPC status (lower case)", ["status"],
                              registry=r)
        for kind in WORKER_HANDLERS.values():  # every kind's series start at 0
            for counter in (self.batches, self.requests, self.request_errors):
                counter.labels(kind)

    def instrument(self, servicer: Any, backend: Any = None) -> None:
        """Count every batch ``servicer`` answers (its handlers are wrapped; call it before
        the servicer is added to a server) and report ``backend``'s device memory."""
        for method, kind in WORKER_HANDLERS.items():
            setattr(servicer, method, self._counted(kind, getattr(servicer, method)))
        if backend is not None:
            self.registry.register(_DeviceMemory(backend))

    def _counted(self, kind: RequestKind, handler: Callable[..., Awaitable[Any]]
                 ) -> Callable[..., Awaitable[Any]]:
        async def counted(request: Any, context: Any) -> Any:
            self.queue_depth.inc()
            started = time.perf_counter()
            try:
                response = await handler(request, context)
            except asyncio.CancelledError:
                self.errors.labels("cancelled").inc()
                raise
            except Exception as exc:
                self.errors.labels(status_for(exc)[0].name.lower()).inc()
                raise
            finally:
                self.queue_depth.dec()
            self.batch_done(kind, response, time.perf_counter() - started)
            return response

        return counted

    def batch_done(self, kind: RequestKind, response: Any, seconds: float) -> None:
        """A batch of ``kind`` was answered with ``response`` after ``seconds``."""
        cost = response.cost
        results = response.results
        self.batches.labels(kind).inc()
        self.requests.labels(kind).inc(len(results))
        failed = sum(1 for r in results if r.HasField("error"))
        if failed:
            self.request_errors.labels(kind).inc(failed)
        for counter, value in ((self.positions, cost.positions_computed),
                               (self.prompt_tokens, cost.prompt_tokens),
                               (self.completion_tokens, cost.completion_tokens)):
            if value:
                counter.labels(kind).inc(value)
        self.batch_seconds.labels(kind).observe(seconds)
        if cost.compute_seconds > 0:
            self.forward_seconds.labels(kind).observe(cost.compute_seconds)


class _DeviceMemory:
    """The worker's CUDA device memory at a scrape: the device's used and total bytes (every
    process on it) and this process's tensors. Nothing on a CPU worker, and CUDA is never
    initialised for it."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def _device(self, torch: Any) -> int | None:
        device = getattr(self.backend, "device", None)
        if getattr(device, "type", None) == "cuda":
            return device.index if device.index is not None else torch.cuda.current_device()
        if torch.cuda.is_initialized():  # a backend without a torch device (vllm)
            return torch.cuda.current_device()
        return None

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")  # a worker without torch has no device to report
        if torch is None or not torch.cuda.is_available():
            return
        index = self._device(torch)
        if index is None:
            return
        free, total = torch.cuda.mem_get_info(index)
        device = f"cuda:{index}"
        for name, documentation, value in (
                ("used", "Device memory in use (by every process on the device)", total - free),
                ("total", "Device memory in all", total),
                ("allocated", "Device memory held by this worker's tensors",
                 torch.cuda.memory_allocated(index))):
            yield _gauge(f"evalfleet_worker_device_memory_{name}_bytes", documentation,
                         "device", {device: value})


@dataclass
class MetricsServer:
    """``/metrics`` of one registry, served over HTTP from a daemon thread."""

    server: Any
    thread: Any
    host: str
    port: int

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::", "[::]") else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (blocks up to half a second for the serving thread)."""
        self.server.shutdown()
        self.server.server_close()

    async def aclose(self) -> None:
        """:meth:`close` off the event loop (a ``RunningServer.on_stop`` callback)."""
        await asyncio.to_thread(self.close)


def serve_metrics(registry: CollectorRegistry, host: str, port: int,
                  field: str = "--metrics_port") -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` in Prometheus' text format
    (``port`` 0: a free port, in the result); UNAVAILABLE naming ``field`` when the address
    cannot be listened on."""
    from prometheus_client import disable_created_metrics, start_http_server

    # No ``*_created`` series beside each counter and histogram (a process-wide setting of
    # prometheus_client's): Prometheus does not use them and they double the series served.
    disable_created_metrics()
    try:
        server, thread = start_http_server(port, addr=host.strip("[]"), registry=registry)
    except OSError as exc:
        raise UnavailableError(f"{field}: cannot listen on {host}:{port} "
                               f"({exc.strerror or exc}); choose a free port") from None
    return MetricsServer(server, thread, host, server.server_port)
