"""The coordinator's gRPC service (``evalfleet.v1.EvaluationService``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from evalfleet.common.logging import get_logger
from evalfleet.common.rpc import RunningServer, Service, start_server
from evalfleet.common.security import ClientSecurity, ServerSecurity
from evalfleet.server.access import AccessPolicy
from evalfleet.server.job import Job
from evalfleet.server.job_queries import JobQueries, stored_evaluation
from evalfleet.server.job_setup import JobSetup
from evalfleet.server.registry import WorkerRegistry
from evalfleet.server.runner import DEFAULT_LEASE_S, JobRunner
from evalfleet.server.scheduler import Scheduler, SchedulerConfig
from evalfleet.server.store import JobStore, SqliteJobStore
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

log = get_logger("coordinator")


class EvaluationServicer(cpb_grpc.EvaluationServiceServicer):
    """Thin translation between the API and the coordinator's parts: the :class:`JobRunner`
    (create, watch, cancel), :class:`JobQueries` (what is stored), the workers, the tasks."""

    def __init__(self, runner: JobRunner, queries: JobQueries, registry: WorkerRegistry,
                 setup: JobSetup) -> None:
        self.runner = runner
        self.queries = queries
        self.registry = registry
        self.setup = setup

    async def CreateEvaluation(self, request: cpb.CreateEvaluationRequest, context
                               ) -> cpb.Evaluation:
        job = await self.runner.create(request.spec)
        return job.to_proto()

    async def GetEvaluation(self, request: cpb.GetEvaluationRequest, context) -> cpb.Evaluation:
        return await self.queries.evaluation(request.id)

    async def WatchEvaluation(self, request: cpb.WatchEvaluationRequest, context):
        async for event in self.runner.watch(request.id):
            yield event

    async def CancelEvaluation(self, request: cpb.CancelEvaluationRequest, context
                               ) -> cpb.Evaluation:
        job = await self.runner.cancel(request.id)
        return job.to_proto() if isinstance(job, Job) else stored_evaluation(job)

    async def ListEvaluations(self, request: cpb.ListEvaluationsRequest, context
                              ) -> cpb.ListEvaluationsResponse:
        return cpb.ListEvaluationsResponse(
            evaluations=await self.queries.list_evaluations(request.limit))

    async def GetResults(self, request: cpb.GetResultsRequest, context
                         ) -> cpb.EvaluationResults:
        return await self.queries.results(request.id)

    async def StreamSamples(self, request: cpb.StreamSamplesRequest, context):
        async for record in self.queries.samples(request.id, request.tasks):
            yield record

    async def ListWorkers(self, request: cpb.ListWorkersRequest, context
                          ) -> cpb.ListWorkersResponse:
        return cpb.ListWorkersResponse(workers=self.registry.list())

    async def EvaluateGate(self, request: cpb.EvaluateGateRequest, context
                           ) -> cpb.EvaluateGateResponse:
        return await self.queries.gate(request)

    async def ListTasks(self, request: cpb.ListTasksRequest, context) -> cpb.ListTasksResponse:
        manager = self.setup.task_manager(request.include_paths)
        entries = await asyncio.to_thread(manager.list)
        return cpb.ListTasksResponse(tasks=[
            cpb.TaskInfo(name=e.name, kind=e.kind, path=str(e.yaml_path or ""),
                         dataset_path=e.dataset_path or "", dataset_name=e.dataset_name or "",
                         data_available=bool(e.in_mirror),
                         output_type=getattr(e, "output_type", "") or "")
            for e in sorted(entries, key=lambda e: e.name)])


class WorkerRegistryServicer(cpb_grpc.WorkerRegistryServiceServicer):
    """Self-registration of workers (``evalfleet serve worker --register``)."""

    def __init__(self, registry: WorkerRegistry) -> None:
        self.registry = registry

    async def RegisterWorker(self, request: cpb.RegisterWorkerRequest, context
                             ) -> cpb.RegisterWorkerResponse:
        lease = self.registry.register(request.address)
        return cpb.RegisterWorkerResponse(lease_seconds=lease,
                                          heartbeat_interval_seconds=lease / 3)

    async def Heartbeat(self, request: cpb.HeartbeatRequest, context) -> cpb.HeartbeatResponse:
        return cpb.HeartbeatResponse(lease_seconds=self.registry.heartbeat(request.address))

    async def UnregisterWorker(self, request: cpb.UnregisterWorkerRequest, context
                               ) -> cpb.UnregisterWorkerResponse:
        self.registry.unregister(request.address)
        return cpb.UnregisterWorkerResponse()


@dataclass
class CoordinatorOptions:
    """Everything ``serve coordinator`` configures besides its store and address."""

    workers: Sequence[str] = ()
    data_dir: str | Path | None = None
    include_paths: Sequence[str] = ()
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    security: ServerSecurity = field(default_factory=ServerSecurity)
    worker_security: ClientSecurity = field(default_factory=ClientSecurity)
    health_interval_s: float = 2.0
    lease_s: float = 15.0
    dns_interval_s: float = 10.0
    worker_wait_s: float = 10.0
    #: seconds a coordinator's lease on a job lasts without renewal (renewed every third)
    job_lease_s: float = DEFAULT_LEASE_S
    #: seconds between claims of jobs whose coordinator died (None: claim none, as the
    #: embedded CLI's coordinator, which runs only its own jobs)
    claim_interval_s: float | None = None
    max_message_bytes: int = 4 * 1024 * 1024


async def _watch_store(store: JobStore, server: RunningServer, interval_s: float) -> None:
    """The coordinator's health follows its store: NOT_SERVING while the store cannot be
    written (a load balancer sends clients elsewhere; running jobs wait, their answers kept),
    SERVING again once it can be; each change is logged."""
    problem: str | None = None
    while True:
        await asyncio.sleep(interval_s)
        now = await store.write_problem()
        if now == problem:
            continue
        status = (health_pb2.HealthCheckResponse.SERVING if now is None
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *server.service_names):
            await server.health.set(name, status)
        if now is None:
            log.info("store_writable_again", store=store.address)
        else:
            log.warning("store_unwritable", store=store.address, error=now)
        problem = now


def _stopper(task: asyncio.Future) -> Callable[[], Awaitable[None]]:
    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop


def _with_overrides(options: CoordinatorOptions, *, workers: Sequence[str],
                    data_dir: str | Path | None, include_paths: Sequence[str],
                    batch_items: int | None) -> CoordinatorOptions:
    """A copy of ``options`` with the arguments given instead of its fields (the caller's
    options, and their scheduler settings, are left as they are)."""
    changes: dict[str, Any] = {}
    if workers:
        changes["workers"] = list(workers)
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if include_paths:
        changes["include_paths"] = list(include_paths)
    if batch_items is not None:
        changes["scheduler"] = replace(options.scheduler, max_batch_items=batch_items)
    return replace(options, **changes)


async def start_coordinator(*, host: str = "127.0.0.1", port: int = 0,
                            workers: Sequence[str] = (), store: JobStore | None = None,
                            data_dir: str | Path | None = None,
                            include_paths: Sequence[str] = (), batch_items: int | None = None,
                            sinks: dict[str, Any] | None = None,
                            confirm_run_unsafe_code: bool = False,
                            options: CoordinatorOptions | None = None,
                            ) -> tuple[RunningServer, JobRunner]:
    """Start the coordinator service; returns the server and its job runner.

    ``options`` holds the fleet settings (scheduler, access policy, TLS and tokens, registry
    timings); ``workers``, ``data_dir``, ``include_paths`` and ``batch_items`` (the most
    requests in one batch) override its fields when given. ``sinks`` are the trackers jobs
    may ask to be logged to (``reporting.sinks.config.load_sinks_config``).
    ``confirm_run_unsafe_code`` is the operator's consent to run model-generated code
    (humaneval, mbpp); jobs must confirm it too.
    """
    options = _with_overrides(options or CoordinatorOptions(), workers=workers,
                              data_dir=data_dir, include_paths=include_paths,
                              batch_items=batch_items)
    store = store or SqliteJobStore()
    await store.open()  # a bad path or URL is reported now, not at the first job
    registry = WorkerRegistry(options.worker_security,
                              health_interval_s=options.health_interval_s,
                              lease_s=options.lease_s, dns_interval_s=options.dns_interval_s)
    registry.add_static(options.workers)
    scheduler = Scheduler(registry, options.scheduler)
    runner = JobRunner(store, registry, scheduler,
                       data_dir=options.data_dir, include_paths=options.include_paths,
                       policy=options.policy, worker_wait_s=options.worker_wait_s,
                       lease_s=options.job_lease_s, claim_interval_s=options.claim_interval_s,
                       sinks=sinks, confirm_run_unsafe_code=confirm_run_unsafe_code)
    server = await start_server(
        [Service(cpb_grpc.add_EvaluationServiceServicer_to_server,
                 EvaluationServicer(runner, JobQueries(store, runner.jobs), registry,
                                    runner.setup),
                 cpb.DESCRIPTOR.services_by_name["EvaluationService"].full_name),
         Service(cpb_grpc.add_WorkerRegistryServiceServicer_to_server,
                 WorkerRegistryServicer(registry),
                 cpb.DESCRIPTOR.services_by_name["WorkerRegistryService"].full_name)],
        host=host, port=port, security=options.security,
        max_receive_bytes=options.max_message_bytes)
    scheduler.start()
    runner.start()
    watching = asyncio.ensure_future(_watch_store(store, server, options.health_interval_s))
    server.on_stop(_stopper(watching))
    server.on_stop(runner.close)  # first: hands unfinished jobs back while the store is open
    server.on_stop(scheduler.close)
    server.on_stop(registry.close)
    return server, runner
