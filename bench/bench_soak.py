"""A long-running coordinator's memory: many small cached jobs, RSS at the start and the end.

One coordinator (in this process: a real gRPC server on loopback, SQLite job store in a
temporary folder) serves a real worker in its own process (``evalfleet serve worker`` with the
tiny model ``models/tiny-smollm2``, or ``--sim``: ``bench/simworker.py``'s simulated worker). A
client in this process (real gRPC calls) runs ``--jobs`` small jobs (arc_easy, ``--limit 5``,
samples logged) in waves of ``--concurrency``: CreateEvaluation, WatchEvaluation to the end,
GetEvaluation, GetResults, StreamSamples. Every job after the first asks the same requests, so
its answers come from the store: what is measured is what the coordinator keeps per job.

RSS (``/proc/self/status`` VmRSS, after a garbage collection) is taken after a warm-up of
``--warmup`` jobs and at the end; the growth is given per 100 jobs (goal: <= 5 MB). With
``--tracemalloc``, the Python allocations still held after job ``--warmup`` and after job
``--snapshot_at`` are diffed and the top lines printed (where memory goes).

Run: ``.venv/bin/python bench/bench_soak.py`` (the last line is JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = os.environ.get("EVALFLEET_DATA_DIR", str(REPO.parent / "shared" / "data"))
TINY_MODEL = REPO / "models" / "tiny-smollm2"


def rss_mb() -> float:
    """This process's resident set size in MB, after a full garbage collection."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_worker(sim: bool) -> tuple[str, subprocess.Popen]:
    """The worker process and its address (the tiny model's hf worker, or a simulated one)."""
    if sim:
        proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "simworker.py")],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"simulated worker did not start: {line!r}")
        return line.split()[-1], proc
    port = _free_port()
    exe = Path(sys.executable).with_name("evalfleet")
    proc = subprocess.Popen([str(exe), "serve", "worker", "--backend", "hf", "--model_args",
                             f"pretrained={TINY_MODEL},dtype=float32,device=cpu",
                             "--batch_size", "8", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return f"127.0.0.1:{port}", proc


async def wait_serving(address: str, timeout_s: float = 300) -> None:
    """Until the worker's health check answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {address} not serving after {timeout_s} s")
            await asyncio.sleep(0.5)


async def run_job(stub, spec) -> None:
    """One job through every read a client makes: create, watch, get, results, samples."""
    from evalfleet.v1 import coordinator_pb2 as cpb

    evaluation = await stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=300)
    async for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id),
                                        timeout=600):
        pass
    final = await stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id), timeout=30)
    if final.state != cpb.EVALUATION_STATE_SUCCEEDED:
        raise RuntimeError(f"job {evaluation.id} ended {cpb.EvaluationState.Name(final.state)}: "
                           f"{final.error}")
    await stub.GetResults(cpb.GetResultsRequest(id=evaluation.id), timeout=60)
    async for _ in stub.StreamSamples(cpb.StreamSamplesRequest(id=evaluation.id), timeout=60):
        pass


def _top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> list[str]:
    stats = after.compare_to(before, "lineno")
    return [str(s) for s in stats[:n]]


async def main(args: argparse.Namespace) -> dict:
    from evalfleet.server.service import start_coordinator
    from evalfleet.server.store import SqliteJobStore
    from evalfleet.v1 import coordinator_pb2 as cpb

    address, proc = start_worker(args.sim)
    folder = tempfile.mkdtemp(prefix="evalfleet-soak-")
    try:
        await wait_serving(address)
        store = SqliteJobStore(Path(folder) / "jobs.db")
        server, runner = await start_coordinator(workers=[address], store=store,
                                                 data_dir=DATA_DIR)
        spec = cpb.EvaluationSpec(model="sim" if args.sim else "hf",
                                  tasks=args.tasks.split(","), limit=args.limit,
                                  log_samples=True, bootstrap_iters=0)
        try:
            return await soak(args, server.address, runner, spec)
        finally:
            await server.stop(0.5)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


async def soak(args: argparse.Namespace, address: str, runner, spec) -> dict:
    """Run the jobs through the coordinator at ``address``; RSS and allocations measured."""
    import grpc

    from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

    start_rss = rss_mb()
    print(f"coordinator RSS at the start: {start_rss:.1f} MB", flush=True)
    snapshots: dict[int, tracemalloc.Snapshot] = {}
    rss: dict[str, float] = {}
    started = time.perf_counter()
    done = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        while done < args.jobs:
            wave = min(args.concurrency, args.jobs - done)
            await asyncio.gather(*(run_job(stub, spec) for _ in range(wave)))
            done += wave
            if done >= args.warmup and "warm" not in rss:
                rss["warm"], rss["warm_at"] = rss_mb(), done
                if args.tracemalloc:
                    tracemalloc.start(8)
                    snapshots[done] = tracemalloc.take_snapshot()
            if args.tracemalloc and done >= args.snapshot_at and len(snapshots) == 1:
                gc.collect()
                snapshots[done] = tracemalloc.take_snapshot()
            if done % args.report_every < wave or done == args.jobs:
                print(f"{done:4d} jobs: RSS {rss_mb():.1f} MB, {len(runner.jobs)} jobs in "
                      f"memory ({time.perf_counter() - started:.0f} s)", flush=True)
    end_rss = rss_mb()
    jobs_in_memory = len(runner.jobs)
    if len(snapshots) == 2:
        (a, snap_a), (b, snap_b) = sorted(snapshots.items())
        print(f"tracemalloc: allocations held after job {b} minus after job {a}:")
        for line in _top_growth(snap_a, snap_b, args.top):
            print(f"  {line}")
    measured = done - rss["warm_at"]
    growth = (end_rss - rss["warm"]) * 100 / max(measured, 1)
    print(f"coordinator RSS at the end: {end_rss:.1f} MB (after warm-up of {rss['warm_at']} "
          f"jobs: {rss['warm']:.1f} MB) -> {growth:.2f} MB per 100 jobs")
    return {"bench": "soak", "jobs": done, "warmup_jobs": rss["warm_at"],
            "concurrency": args.concurrency, "worker": "simulated" if args.sim else "tiny hf",
            "tasks": args.tasks, "limit": args.limit, "rss_start_mb": round(start_rss, 1),
            "rss_after_warmup_mb": round(rss["warm"], 1), "rss_end_mb": round(end_rss, 1),
            "jobs_in_memory_at_end": jobs_in_memory,
            "seconds": round(time.perf_counter() - started, 1),
            "rss_growth_mb_per_100_jobs": round(growth, 2)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=220)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tasks", default="arc_easy")
    parser.add_argument("--limit", type=float, default=5)
    parser.add_argument("--sim", action="store_true",
                        help="a simulated worker (bench/simworker.py) instead of the tiny model")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="diff Python allocations between --warmup and --snapshot_at jobs")
    parser.add_argument("--snapshot_at", type=int, default=100)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--report_every", type=int, default=20)
    os.environ.setdefault("EVALFLEET_LOG_LEVEL", "WARNING")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from evalfleet.common.logging import configure_logging

    configure_logging(json=False, level="WARNING")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
