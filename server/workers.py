"""Connections to inference workers and the dispatch of request batches across them.

Requests travel in batches (never one RPC per request). Each worker keeps a small number of
batches in flight so that it always has the next one queued while computing. A batch that fails
because its worker is unreachable goes back on the queue for another worker; answers are
idempotent (content-derived ids), so a retried batch can never double-count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from evalfleet.common.errors import EvalfleetError, FailedPreconditionError, UnavailableError
from evalfleet.common.logging import get_logger
from evalfleet.common.rpc import insecure_channel
from evalfleet.v1 import inference_pb2 as pb
from evalfleet.v1 import inference_pb2_grpc as pb_grpc

log = get_logger("workers")

#: Statuses after which a batch is retried on another worker.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}


@dataclass(frozen=True)
class WorkItem:
    """One distinct model request: its content id, kind and arguments."""

    request_id: str
    request_type: str  # loglikelihood | loglikelihood_rolling | generate_until
    arguments: tuple
    generation: pb.GenerationParams | None = None
    chat_messages: bool = False  # the context is JSON chat messages (chat API workers)


@dataclass
class Batch:
    """Requests of one kind sent to one worker in one RPC."""

    request_type: str
    items: list[WorkItem]
    attempts: int = 0


@dataclass
class BatchResult:
    """Answers of one batch: serialized ``TokenScores`` or ``Generation`` per request id, the
    requests the worker could not answer (with its reason), and what the batch cost."""

    answers: dict[str, bytes]
    errors: dict[str, pb.ItemError]
    cost: pb.BatchCost
    worker: str

    @property
    def positions_computed(self) -> int:
        return self.cost.positions_computed


class RequestFailedError(EvalfleetError):
    """A request that a worker could not answer, on every try; the job fails with it."""

    code = FailedPreconditionError.code

    def __init__(self, request_id: str, worker: str, reason: str) -> None:
        super().__init__(f"worker {worker} could not answer request {request_id[:12]}: {reason}")
        self.request_id = request_id
        self.worker = worker
        self.reason = reason


class WorkerClient:
    """A channel and stub for one worker, with the model info it reported."""

    def __init__(self, address: str, *, rpc_timeout_s: float = 3600.0) -> None:
        self.address = address
        self.rpc_timeout_s = rpc_timeout_s
        self._channel = insecure_channel(address)
        self._stub = pb_grpc.InferenceServiceStub(self._channel)
        self.info: pb.ModelInfo | None = None

    @property
    def stub(self) -> pb_grpc.InferenceServiceStub:
        """The worker's InferenceService stub (e.g. for ApplyChatTemplate)."""
        return self._stub

    async def connect(self, timeout_s: float = 10.0) -> pb.ModelInfo:
        """Fetch the worker's model info; UnavailableError naming the address if it is down."""
        try:
            self.info = await self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(
                f"worker {self.address} is unreachable ({exc.code().name}: {exc.details()}); "
                "check the address and that `evalfleet serve worker` is running there"
            ) from exc
        return self.info

    async def run(self, batch: Batch) -> BatchResult:
        """Send one batch and collect its answers."""
        if batch.request_type == "loglikelihood":
            request = pb.LoglikelihoodRequest(items=[
                pb.LoglikelihoodItem(request_id=w.request_id, context=w.arguments[0],
                                     continuation=w.arguments[1]) for w in batch.items])
            response = await self._stub.Loglikelihood(request, timeout=self.rpc_timeout_s)
        elif batch.request_type == "loglikelihood_rolling":
            request = pb.LoglikelihoodRollingRequest(items=[
                pb.RollingItem(request_id=w.request_id, text=w.arguments[0]) for w in batch.items])
            response = await self._stub.LoglikelihoodRolling(request, timeout=self.rpc_timeout_s)
        elif batch.request_type == "generate_until":
            request = pb.GenerateUntilRequest(items=[
                pb.GenerateItem(request_id=w.request_id, context=w.arguments[0],
                                params=w.generation, chat_messages=w.chat_messages)
                for w in batch.items])
            response = await self._stub.GenerateUntil(request, timeout=self.rpc_timeout_s)
        else:  # pragma: no cover - the planner only makes the three kinds
            raise ValueError(f"unknown request type {batch.request_type}")
        answers: dict[str, bytes] = {}
        errors: dict[str, pb.ItemError] = {}
        for r in response.results:
            if r.HasField("error"):
                errors[r.request_id] = r.error
            else:
                answers[r.request_id] = r.SerializeToString()
        return BatchResult(answers, errors, response.cost, self.address)

    async def close(self) -> None:
        await self._channel.close()


def shares_prefix(a: WorkItem, b: WorkItem) -> bool:
    """Whether two requests' prompts share at least half of the shorter one."""
    x, y = a.arguments[0], b.arguments[0]
    shortest = min(len(x), len(y))
    if shortest == 0:
        return False
    common = 0
    for cx, cy in zip(x, y, strict=False):
        if cx != cy:
            break
        common += 1
    return common * 2 >= shortest


def make_batches(items: Sequence[WorkItem], *, max_items: int = 512,
                 max_bytes: int = 8 * 1024 * 1024, stretch: int = 4) -> list[Batch]:
    """Cut requests into batches of one kind, keeping their order and their prefix groups.

    The planner orders requests so that those sharing a prefix (the choices of a document, the
    documents of a task with a common few-shot block) are adjacent. A full batch is not cut in
    the middle of such a group: it grows, up to ``stretch`` times its size, until the group
    ends, so the group lands on one worker, where the prefix is computed once.
    """
    batches: list[Batch] = []
    by_kind: dict[str, list[WorkItem]] = {}
    for item in items:
        by_kind.setdefault(item.request_type, []).append(item)
    for kind, kind_items in by_kind.items():
        current: list[WorkItem] = []
        size = 0
        for item in kind_items:
            item_bytes = sum(len(a) for a in item.arguments if isinstance(a, str)) + 80
            full = len(current) >= max_items or size + item_bytes > max_bytes
            hard_full = (len(current) >= stretch * max_items
                         or size + item_bytes > stretch * max_bytes)
            if current and (hard_full or (full and not shares_prefix(current[-1], item))):
                batches.append(Batch(kind, current))
                current, size = [], 0
            current.append(item)
            size += item_bytes
        if current:
            batches.append(Batch(kind, current))
    return batches


@dataclass
class WorkerPool:
    """The workers of one job, all serving the same model."""

    addresses: Sequence[str]
    in_flight_per_worker: int = 2
    max_attempts: int = 3
    clients: list[WorkerClient] = field(default_factory=list)

    async def connect(self) -> pb.ModelInfo:
        """Connect to every worker; they must all serve the same model (same fingerprint)."""
        if not self.addresses:
            raise FailedPreconditionError(
                "no inference workers: pass worker addresses in the spec or start the "
                "coordinator with --workers host:port"
            )
        self.clients = [WorkerClient(a) for a in self.addresses]
        infos = await asyncio.gather(*(c.connect() for c in self.clients))
        fingerprints = {i.fingerprint for i in infos}
        if len(fingerprints) > 1:
            detail = ", ".join(f"{c.address}={c.info.fingerprint[:12]}" for c in self.clients)
            raise FailedPreconditionError(f"workers serve different models: {detail}")
        return infos[0]

    async def run(self, batches: Sequence[Batch],
                  on_result: Callable[[Batch, BatchResult], Awaitable[None]]) -> None:
        """Compute every batch, calling ``on_result`` as each finishes.

        A batch whose worker fails with a retryable status is requeued (at most
        ``max_attempts`` times); a worker that failed is not used again for this run. Requests
        a worker could not answer go back on the queue when their error is retryable (up to
        ``max_attempts``); otherwise the run stops with :class:`RequestFailedError`.
        """
        queue: asyncio.Queue[Batch] = asyncio.Queue()
        for batch in batches:
            queue.put_nowait(batch)
        remaining = len(batches)
        done = asyncio.Event()
        if remaining == 0:
            return
        failure: list[BaseException] = []
        healthy = {c.address for c in self.clients}

        async def consume(client: WorkerClient) -> None:
            nonlocal remaining
            while not done.is_set() and client.address in healthy:
                try:
                    batch = await asyncio.wait_for(queue.get(), timeout=0.2)
                except TimeoutError:
                    continue
                try:
                    result = await client.run(batch)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in RETRYABLE and batch.attempts + 1 < self.max_attempts:
                        batch.attempts += 1
                        healthy.discard(client.address)
                        log.warning("worker_failed_requeue", worker=client.address,
                                    code=exc.code().name, attempts=batch.attempts)
                        queue.put_nowait(batch)
                        if not healthy:
                            failure.append(UnavailableError(
                                f"all workers failed; last: {client.address} "
                                f"({exc.code().name}: {exc.details()})"))
                            done.set()
                        return
                    failure.append(UnavailableError(
                        f"worker {client.address} failed a batch ({exc.code().name}: "
                        f"{exc.details()})") if exc.code() in RETRYABLE else
                        FailedPreconditionError(
                            f"worker {client.address} rejected a batch ({exc.code().name}: "
                            f"{exc.details()})"))
                    done.set()
                    return
                retry = [w for w in batch.items if w.request_id in result.errors]
                fatal = next((w for w in retry if not result.errors[w.request_id].retryable
                              or batch.attempts + 1 >= self.max_attempts), None)
                await on_result(batch, result)
                if fatal is not None:
                    failure.append(RequestFailedError(
                        fatal.request_id, client.address,
                        result.errors[fatal.request_id].message))
                    done.set()
                    return
                if retry:
                    log.warning("items_failed_requeue", worker=client.address, items=len(retry),
                                reason=result.errors[retry[0].request_id].message)
                    queue.put_nowait(Batch(batch.request_type, retry, batch.attempts + 1))
                    continue
                remaining -= 1
                if remaining == 0:
                    done.set()

        consumers = [asyncio.create_task(consume(c))
                     for c in self.clients for _ in range(self.in_flight_per_worker)]
        try:
            await done.wait()
        finally:
            for task in consumers:
                task.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
        if failure:
            raise failure[0]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
