"""Submit a job to a coordinator, follow its progress, fetch and write its results."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evalfleet.common.errors import EvalfleetError, FailedPreconditionError, UnavailableError
from evalfleet.common.security import ClientSecurity
from evalfleet.server.results import sanitize_model_name
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

TERMINAL = {cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED,
            cpb.EVALUATION_STATE_CANCELLED}
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


async def run_job(
    address: str, spec: cpb.EvaluationSpec, *, console: Console, show_progress: bool = True,
    security: ClientSecurity | None = None,
) -> tuple[cpb.EvaluationResults, list[cpb.SampleRecord]]:
    """Create the evaluation, follow it to the end, and return its results and samples.

    ``security``: the coordinator's token and TLS settings.
    """
    security = security or ClientSecurity()
    md = security.metadata
    async with security.channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        try:
            evaluation = await stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec),
                                                     timeout=600, metadata=md)
            state = await _follow(stub, evaluation, console, show_progress, md)
            if state.state != cpb.EVALUATION_STATE_SUCCEEDED:
                final = await stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id),
                                                 timeout=30, metadata=md)
                name = cpb.EvaluationState.Name(final.state).removeprefix("EVALUATION_STATE_")
                if final.state == cpb.EVALUATION_STATE_FAILED and "unreachable" in final.error:
                    raise UnavailableError(f"evaluation {final.id} failed: {final.error}")
                raise FailedPreconditionError(
                    f"evaluation {final.id} {name.lower()}: {final.error or 'no results'}")
            results = await stub.GetResults(cpb.GetResultsRequest(id=evaluation.id), timeout=60,
                                            metadata=md)
            samples: list[cpb.SampleRecord] = []
            if spec.log_samples:
                async for record in stub.StreamSamples(
                        cpb.StreamSamplesRequest(id=evaluation.id), timeout=600, metadata=md):
                    samples.append(record)
            return results, samples
        except grpc.aio.AioRpcError as exc:
            raise RemoteError(exc, address) from exc


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


async def _follow(stub: cpb_grpc.EvaluationServiceStub, evaluation: cpb.Evaluation,
                  console: Console, show_progress: bool, metadata: tuple = ()
                  ) -> cpb.EvaluationEvent:
    last = cpb.EvaluationEvent(id=evaluation.id, state=evaluation.state)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not show_progress,
                  transient=False) as progress:
        bars: dict[str, Any] = {}
        async for event in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id),
                                                metadata=metadata):
            last = event
            if STORE_REPORT in event.message:  # what a resumed or repeated job reuses
                console.print(f"evaluation {evaluation.id}: {event.message}")
            for p in event.progress:
                if p.task not in bars:
                    bars[p.task] = progress.add_task(p.task, total=p.total)
                progress.update(bars[p.task], completed=p.done, total=p.total)
            if event.state in TERMINAL:
                break
    return last


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
        path = folder / f"samples_{task}_{date_id}.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        written.append(path)
    return written
