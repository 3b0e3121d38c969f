"""``evalfleet workers``: a coordinator's workers, their model, state and throughput."""

from __future__ import annotations

import argparse
import json

import grpc
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from evalfleet.client.connect import client_security
from evalfleet.client.submit import RemoteError
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc


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
    table = Table("address", "source", "state", "backend", "model", "fingerprint", "in flight",
                  "req/s", "answered", "failed", "last error")
    for w in reply.workers:
        table.add_row(w.address, w.source, cpb.WorkerState.Name(w.state).removeprefix(
            "WORKER_STATE_"), w.backend, w.model_name, w.fingerprint[:19],
            f"{w.in_flight_batches}/{w.max_in_flight_batches}", f"{w.requests_per_second:.1f}",
            str(w.requests_answered), str(w.batches_failed), w.last_error)
    Console().print(table)
    return 0
