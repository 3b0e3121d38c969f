"""Tables on a narrow terminal keep what identifies a row whole; ``workers`` dates the last
error of a worker that is READY again."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from conftest import REPO_ROOT, free_port
from rich.console import Console

from evalfleet.client.tables import Column, print_table
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

EVALFLEET = str(Path(sys.executable).parent / "evalfleet")


def test_a_narrow_terminal_drops_optional_columns_and_keeps_keys_whole():
    from evalfleet.client.workers_command import COLUMNS

    address = "coordinator-worker-17.eval.internal.example.org:50061"
    row = [address, "dns:workers.eval.internal", "READY", "hf", "HuggingFaceTB/SmolLM2-135M",
           "sha256:0123456789ab", "1/3", "12.5", "1234", "0",
           "3 min ago: UNAVAILABLE: connection refused by peer"]
    out = io.StringIO()
    print_table(COLUMNS, [row], Console(file=out, width=80, force_terminal=True,
                                        color_system=None))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any(address in line and "READY" in line for line in lines)  # whole, one line
    assert "sha256" not in out.getvalue() and "source" not in out.getvalue()  # dropped


def test_a_wide_terminal_shows_every_column():
    columns = (Column("name", key=True), Column("extra", drop_order=1))
    out = io.StringIO()
    print_table(columns, [["arc_easy", "[bold]x[/bold]"]],
                Console(file=out, width=120, force_terminal=True, color_system=None))
    assert "extra" in out.getvalue() and "[bold]x[/bold]" in out.getvalue()  # no markup


def _workers(stub) -> list[cpb.WorkerStatus]:
    return list(stub.ListWorkers(cpb.ListWorkersRequest(), timeout=10).workers)


def _wait(stub, state: int) -> None:
    deadline = time.time() + 30
    while _workers(stub)[0].state != state:
        assert time.time() < deadline, _workers(stub)
        time.sleep(0.1)


def test_workers_shows_the_age_of_a_ready_workers_last_error(background_loop):
    """A worker unreachable at first, then started (a simulated worker: a real gRPC inference
    server without a model): READY, its old error dated, in the real CLI's output."""
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from simworker import start_simulated_worker

    address = f"127.0.0.1:{free_port()}"
    server, _ = background_loop.run(start_coordinator(options=CoordinatorOptions(
        workers=[address], health_interval_s=0.2)))
    worker = None
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            _wait(stub, cpb.WORKER_STATE_DOWN)
            worker, _ = background_loop.run(start_simulated_worker(
                port=int(address.split(":")[1])))
            _wait(stub, cpb.WORKER_STATE_READY)
            [status] = _workers(stub)
            assert status.last_error and status.HasField("last_error_at")
            result = subprocess.run([EVALFLEET, "workers", "--coordinator", server.address],
                                    capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
                                    env={**os.environ, "COLUMNS": "80"})
        assert result.returncode == 0, result.stderr
        row = result.stdout.splitlines()[1].split("\t")
        assert row[0] == address and row[2] == "READY"
        age, error = row[-1].split(" ago: ", 1)
        assert age.endswith(" s") and int(age[:-2]) < 60 and error == status.last_error
    finally:
        if worker is not None:
            background_loop.run(worker.stop(0.5))
        background_loop.run(server.stop(0.5))
