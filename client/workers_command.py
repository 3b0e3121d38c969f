"""``evalfleet workers``: a coordinator's workers, their model, state and throughput."""

from __future__ import annotations

import argparse
import json
import time

import grpc
from google.protobuf.json_format import MessageToDict

from evalfleet.client.connect import client_security
from evalfleet.client.submit import RemoteError
from evalfleet.client.tables import Column, print_table
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

#: The table's columns; a narrow terminal leaves out the optional ones (lowest order first).
COLUMNS = (Column("address", key=True), Column("source", drop_order=1),
           Column("state", key=True), Column("backend", drop_order=4),
           Column("model", drop_order=8), Column("fingerprint", drop_order=2),
           Column("in flight", drop_order=6), Column("req/s", drop_order=7),
           Column("answered", drop_order=3), Column("failed", drop_order=5),
           Column("last error"))
#: Shown before ``last error`` when a worker calls a remote API: its adaptive concurrency.
API_COLUMN = Column("API calls", drop_order=5)


def age(seconds: float) -> str:
    """``40 s``, ``12 min``, ``3 h``, ``2 d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def last_error_text(worker: cpb.WorkerStatus, now: float) -> str:
    """The worker's last error with its age: ``3 min ago: UNAVAILABLE: ...``; empty if none."""
    if not worker.last_error:
        return ""
    if not worker.HasField("last_error_at"):  # a coordinator that does not date its errors
        return worker.last_error
    when = worker.last_error_at.ToNanoseconds() / 1e9
    return f"{age(now - when)} ago: {worker.last_error}"


def worker_row(w: cpb.WorkerStatus, now: float) -> list[str]:
    """One row of the table, every value whole."""
    return [w.address, w.source, cpb.WorkerState.Name(w.state).removeprefix("WORKER_STATE_"),
            w.backend, w.model_name, w.fingerprint[:19],
            f"{w.in_flight_batches}/{w.max_in_flight_batches}", f"{w.requests_per_second:.1f}",
            str(w.requests_answered), str(w.batches_failed), last_error_text(w, now)]


def api_calls_text(w: cpb.WorkerStatus) -> str:
    """``4 (12 throttled)``: a remote worker's calls in flight now and its throttled answers."""
    if not w.api_concurrency:
        return ""
    return f"{w.api_concurrency} ({w.throttled_responses} throttled)"


def workers_table(workers: list[cpb.WorkerStatus], now: float) -> tuple[tuple, list[list[str]]]:
    """The columns and rows of ``workers``; ``API calls`` only when a worker calls an API."""
    rows = [worker_row(w, now) for w in workers]
    if not any(w.api_concurrency for w in workers):
        return COLUMNS, rows
    columns = (*COLUMNS[:-1], API_COLUMN, COLUMNS[-1])
    return columns, [[*r[:-1], api_calls_text(w), r[-1]] for r, w in zip(rows, workers,
                                                                           strict=True)]


async def run_workers(args: argparse.Namespace) -> int:
    security = client_security(args)
    async with security.channel(args.coordinator) as channel:
        try:
            reply = await cpb_grpc.EvaluationServiceStub(channel).ListWorkers(
                cpb.ListWorkersRequest(), timeout=30, metadata=security.metadata)
        except grpc.aio.AioRpcError as exc:
            raise RemoteError(exc, args.coordinator) from exc
    if args.json:
        for worker in reply.workers:
            print(json.dumps(MessageToDict(worker, preserving_proto_field_name=True)))
        return 0
    print_table(*workers_table(list(reply.workers), time.time()))
    return 0
