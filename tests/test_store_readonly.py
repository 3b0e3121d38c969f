"""A SQLite store whose files cannot be written (``chattr +i``, a read-only mount) answers
UNAVAILABLE naming the file, and works again once they can be: SQLite itself dies of SIGBUS
when it must grow a WAL index it cannot write, which killed the coordinator without a line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

SCRIPT = textwrap.dedent("""
    import asyncio, subprocess, sys
    from evalfleet.server.store import SqliteJobStore
    from evalfleet.server.store.base import StoreUnavailableError

    PATH = sys.argv[1]
    FILES = [PATH, PATH + "-wal", PATH + "-shm"]

    async def main():
        store = SqliteJobStore(PATH)
        await store.open()
        await store.put_answers("fp", [("r0", b"x")])
        subprocess.run(["chattr", "+i", *FILES], check=True)
        try:
            for i in range(3000):  # enough to outgrow the WAL index SQLite mapped
                await store.put_answers("fp", [(f"r{i}-{j}", b"y" * 4000) for j in range(8)])
            print("WROTE")
        except StoreUnavailableError as exc:
            print("REFUSED", exc.message)
        finally:
            subprocess.run(["chattr", "-i", *FILES], check=True)
        await store.put_answers("fp", [("after", b"z")])
        print("AGAIN", sorted(await store.get_answers("fp", ["r0", "after"])))
        await store.close()

    asyncio.run(main())
""")


def test_an_unwritable_store_is_refused_with_a_line_not_a_sigbus(tmp_path):
    probe = tmp_path / "probe"
    probe.touch()
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root and a file system that supports it")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    path = tmp_path / "store.db"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True,
                          text=True, timeout=120)
    subprocess.run(["chattr", "-i", *(str(path) + s for s in ("", "-wal", "-shm"))],
                   capture_output=True)
    assert done.returncode == 0, f"rc {done.returncode} (-7 is SIGBUS): {done.stderr[-2000:]}"
    lines = done.stdout.splitlines()
    assert lines[0].startswith("REFUSED store sqlite:///"), done.stdout
    assert "cannot be written (Operation not permitted)" in lines[0]
    assert lines[1] == "AGAIN ['after', 'r0']"


def test_a_coordinator_waits_out_an_unwritable_store_and_loses_nothing(
        background_loop, data_dir, tmp_path):
    """A job running when its store becomes unwritable waits (its answers kept in memory),
    the coordinator's health is NOT_SERVING meanwhile, and once the store can be written
    again the job finishes with every answer stored. Before: SIGBUS, or the batch's answers
    failing the job."""
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from simworker import Script, start_simulated_worker

    from evalfleet.server.service import CoordinatorOptions, start_coordinator
    from evalfleet.server.store import SqliteJobStore
    from evalfleet.v1 import coordinator_pb2 as cpb
    from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

    if subprocess.run(["chattr", "+i", str(tmp_path)], capture_output=True).returncode:
        pytest.skip("chattr +i needs root and a file system that supports it")
    subprocess.run(["chattr", "-i", str(tmp_path)], check=True)
    path = tmp_path / "jobs.db"
    files = [str(path) + s for s in ("", "-wal", "-shm")]
    worker, _ = background_loop.run(start_simulated_worker(Script(batch_delay=0.25)))
    server, runner = background_loop.run(start_coordinator(options=CoordinatorOptions(
        workers=[worker.address], data_dir=data_dir, health_interval_s=0.2),
        store=SqliteJobStore(path)))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            job = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                model="sim", tasks=["arc_easy"], limit=60, batch_size="8")), timeout=60)

            def state() -> cpb.Evaluation:
                return stub.GetEvaluation(cpb.GetEvaluationRequest(id=job.id), timeout=10)

            def wait(check, what: str, limit_s: float = 30) -> None:
                deadline = time.monotonic() + limit_s
                while not check():
                    assert time.monotonic() < deadline, f"timed out waiting for {what}"
                    time.sleep(0.05)

            wait(lambda: sum(p.done for p in state().progress) > 0, "a first stored batch")
            subprocess.run(["chattr", "+i", *files], check=True)
            try:
                wait(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                     == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING")
                events = [e.message for e in runner.jobs[job.id].history]
                wait(lambda: any("store cannot be written" in e.message
                                 for e in runner.jobs[job.id].history), "the job's event")
                time.sleep(1.0)  # the job waits; it neither fails nor finishes
                assert state().state == cpb.EVALUATION_STATE_RUNNING, events
            finally:
                subprocess.run(["chattr", "-i", *files], check=True)
            wait(lambda: state().state == cpb.EVALUATION_STATE_SUCCEEDED, "success", 60)
            wait(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                 == health_pb2.HealthCheckResponse.SERVING, "SERVING again")
            final = state()
            assert all(p.done == p.total for p in final.progress)
            results = stub.GetResults(cpb.GetResultsRequest(id=job.id), timeout=30)
            assert "arc_easy" in results.results_json
    finally:
        subprocess.run(["chattr", "-i", *files], capture_output=True)
        background_loop.run(server.stop(0.2))
        background_loop.run(worker.stop(0.2))
