"""Submit a job to a coordinator, follow its progress, fetch and write its results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import grpc
from rich.console import Console

from evalfleet.client.progress import TERMINAL, ProgressDisplay
from evalfleet.common.errors import EvalfleetError, FailedPreconditionError, UnavailableError
from evalfleet.common.file_names import file_name_part
from evalfleet.common.security import ClientSecurity
from evalfleet.server.results import sanitize_model_name
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

T = TypeVar("T")
#: The coordinator's event that says how many answers came from its store.
STORE_REPORT = "answers from the store"


class RemoteError(EvalfleetError):
    """A status returned by the coordinator, carried to the CLI as one line."""

    def __init__(self, exc: grpc.aio.AioRpcError, address: str) -> None:
        if exc.code() == grpc.StatusCode.UNAVAILABLE and "worker" not in (exc.details() or ""):
            message = f"coordinator {address} is unreachable ({exc.details()})"
        else:
            message = exc.details() or exc.code().name
        super().__init__(message)
        self.code = exc.code()


#: Seconds a client keeps reconnecting to a coordinator it lost (killed, restarting).
RECONNECT_PATIENCE_S = 120.0


class Connection:
    """A channel to the coordinator that is reopened when the coordinator goes away.

    ``address`` is one ``host:port`` or several, comma-separated: coordinators of one shared
    store, any of which can serve a job (one that does not run it follows it from the store,
    and takes it over once its coordinator's lease runs out). ``reconnect`` is called on
    UNAVAILABLE: it closes the channel, says so on the console, waits (growing back-off) and
    opens a fresh one to the next address (so gRPC's own reconnect back-off never delays us),
    until ``patience_s`` have passed without reaching a coordinator.
    """

    def __init__(self, address: str, security: ClientSecurity, console: Console,
                 patience_s: float = RECONNECT_PATIENCE_S) -> None:
        self.addresses = [a.strip() for a in address.split(",") if a.strip()] or [address]
        self._index = 0
        self.security = security
        self.console = console
        self.patience_s = patience_s
        self.metadata = security.metadata
        self._channel: grpc.aio.Channel | None = None
        self._stub: cpb_grpc.EvaluationServiceStub | None = None
        self._lost_at: float | None = None
        self._attempt = 0
        self.clock: Callable[[], float] = time.monotonic

    @property
    def address(self) -> str:
        """The coordinator this connection uses now."""
        return self.addresses[self._index]

    def next_address(self) -> str:
        """Move to the next coordinator (round robin); returns the one left."""
        left = self.address
        self._index = (self._index + 1) % len(self.addresses)
        return left

    @property
    def stub(self) -> cpb_grpc.EvaluationServiceStub:
        if self._stub is None:
            self._channel = self.security.channel(self.address)
            self._stub = cpb_grpc.EvaluationServiceStub(self._channel)
        return self._stub

    def reached(self) -> None:
        """The coordinator answered: the reconnect budget starts afresh."""
        if self._lost_at is not None:
            self.console.print(f"reconnected to coordinator {self.address}")
        self._lost_at = None
        self._attempt = 0

    async def reconnect(self, exc: grpc.aio.AioRpcError, what: str) -> None:
        """Wait and reopen after ``exc`` (UNAVAILABLE); RemoteError once out of patience."""
        now = self.clock()
        if self._lost_at is None:
            self._lost_at = now
        if now - self._lost_at >= self.patience_s:
            raise RemoteError(exc, self.address) from exc
        self._attempt += 1
        lost = self.next_address()
        # The next address at once; a growing back-off before each new round of them all.
        rounds = (self._attempt - 1) // len(self.addresses)
        delay = 0.0 if self._index else min(5.0, 0.5 * 2 ** rounds)
        self.console.print(f"coordinator {lost} unreachable ({exc.details()}); "
                           f"reconnecting in {delay:g} s to {self.address} to keep following "
                           f"{what}")
        await self.close()
        await asyncio.sleep(delay)

    async def call(self, fn: Callable[[cpb_grpc.EvaluationServiceStub], Awaitable[T]],
                   what: str) -> T:
        """``await fn(stub)``, reconnecting on UNAVAILABLE; other statuses are RemoteError."""
        while True:
            try:
                result = await fn(self.stub)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise RemoteError(exc, self.address) from exc
                await self.reconnect(exc, what)
                continue
            self.reached()
            return result

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None


async def run_job(
    address: str, spec: cpb.EvaluationSpec, *, console: Console, show_progress: bool = True,
    security: ClientSecurity | None = None, patience_s: float = RECONNECT_PATIENCE_S,
    on_created: Callable[[cpb.Evaluation], None] | None = None,
) -> tuple[cpb.EvaluationResults, list[cpb.SampleRecord]]:
    """Create the evaluation, follow it to the end, and return its results and samples.

    ``security``: the coordinator's token and TLS settings. Once the evaluation is created
    (planned and accepted: ``on_created`` is called then), losing the coordinator (killed,
    restarting) is survived for ``patience_s``: the client reconnects and keeps following the
    same evaluation.
    """
    conn = Connection(address, security or ClientSecurity(), console, patience_s)
    md = conn.metadata
    try:
        with console.status("planning the evaluation (tasks, documents, requests)") \
                if show_progress else contextlib.nullcontext():
            evaluation = await _create(conn, spec)
        if on_created is not None:
            on_created(evaluation)
        what = f"evaluation {evaluation.id}"
        state = await _follow(conn, evaluation, console, show_progress)
        if state.state != cpb.EVALUATION_STATE_SUCCEEDED:
            final = await conn.call(lambda stub: stub.GetEvaluation(
                cpb.GetEvaluationRequest(id=evaluation.id), timeout=30, metadata=md), what)
            name = cpb.EvaluationState.Name(final.state).removeprefix("EVALUATION_STATE_")
            if final.state == cpb.EVALUATION_STATE_FAILED and "unreachable" in final.error:
                raise UnavailableError(f"evaluation {final.id} failed: {final.error}")
            raise FailedPreconditionError(
                f"evaluation {final.id} {name.lower()}: {final.error or 'no results'}")
        results = await conn.call(lambda stub: stub.GetResults(
            cpb.GetResultsRequest(id=evaluation.id), timeout=60, metadata=md), what)
        samples: list[cpb.SampleRecord] = []
        if spec.log_samples:
            async def all_samples(stub: cpb_grpc.EvaluationServiceStub
                                  ) -> list[cpb.SampleRecord]:
                return [record async for record in stub.StreamSamples(
                    cpb.StreamSamplesRequest(id=evaluation.id), timeout=600, metadata=md)]

            samples = await conn.call(all_samples, what)
        return results, samples
    finally:
        await conn.close()


async def _create(conn: Connection, spec: cpb.EvaluationSpec) -> cpb.Evaluation:
    """CreateEvaluation on the first coordinator that can be reached (one try each)."""
    while True:
        try:
            return await conn.stub.CreateEvaluation(
                cpb.CreateEvaluationRequest(spec=spec), timeout=600, metadata=conn.metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or \
                    conn.address == conn.addresses[-1]:
                raise RemoteError(exc, conn.address) from exc
            conn.console.print(f"coordinator {conn.address} unreachable ({exc.details()}); "
                               "trying the next one")
            await conn.close()
            conn.next_address()


async def fetch_results(address: str, evaluation_id: str,
                        security: ClientSecurity | None = None,
                        ) -> tuple[cpb.EvaluationResults, list[cpb.SampleRecord]]:
    """A finished evaluation's results and samples from the coordinator at ``address``."""
    security = security or ClientSecurity()
    md = security.metadata
    async with security.channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        try:
            results = await stub.GetResults(cpb.GetResultsRequest(id=evaluation_id), timeout=60,
                                            metadata=md)
            samples = [record async for record in stub.StreamSamples(
                cpb.StreamSamplesRequest(id=evaluation_id), timeout=600, metadata=md)]
        except grpc.aio.AioRpcError as exc:
            raise RemoteError(exc, address) from exc
    return results, samples


def _event_key(event: cpb.EvaluationEvent) -> tuple:
    return (event.time.seconds, event.time.nanos, event.state, event.message)


async def _follow(conn: Connection, evaluation: cpb.Evaluation, console: Console,
                  show_progress: bool) -> cpb.EvaluationEvent:
    """Follow the evaluation's events to its end, across coordinator restarts: a coordinator
    replays a job's history to every watcher, so events already seen are skipped."""
    last = cpb.EvaluationEvent(id=evaluation.id, state=evaluation.state)
    seen: set[tuple] = set()
    what = f"evaluation {evaluation.id}"
    with ProgressDisplay(console, enabled=show_progress) as display:
        # Outside a terminal, plain lines keep coming while no event does.
        heartbeat = asyncio.ensure_future(display.heartbeat()) if display.plain else None
        try:
            while True:
                try:
                    async for event in conn.stub.WatchEvaluation(
                            cpb.WatchEvaluationRequest(id=evaluation.id),
                            metadata=conn.metadata):
                        conn.reached()
                        last = event
                        key = _event_key(event)
                        if key not in seen:
                            seen.add(key)
                            if STORE_REPORT in event.message:  # what a resumed job reuses
                                console.print(f"evaluation {evaluation.id}: {event.message}")
                        display.update(event.state, event.progress, event.usage)
                        if event.state in TERMINAL:
                            return last
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise RemoteError(exc, conn.address) from exc
                    await conn.reconnect(exc, what)
                    continue
                # The stream ended before the job did (the coordinator handed it over): follow on.
                await asyncio.sleep(0.5)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()


def write_outputs(output_path: str, results: cpb.EvaluationResults,
                  samples: list[cpb.SampleRecord]) -> list[Path]:
    """Write ``results_<date>.json`` and ``samples_<task>_<date>.jsonl`` as lm-eval 0.4.13 does."""
    doc = json.loads(results.results_json)
    date_id = datetime.now().isoformat().replace(":", "-")
    target = Path(output_path)
    if target.suffix == ".json":
        folder = target.parent
        results_file = folder / f"{target.stem}_{date_id}.json"
    else:
        folder = target / sanitize_model_name(doc.get("model_name", "model"))
        results_file = folder / f"results_{date_id}.json"
    folder.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    written = [results_file]
    by_task: dict[str, list[str]] = {}
    for record in samples:
        by_task.setdefault(record.task, []).append(record.json)
    for task, lines in by_task.items():
        path = folder / f"samples_{file_name_part(task)}_{date_id}.jsonl"  # stays in folder
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        written.append(path)
    return written
