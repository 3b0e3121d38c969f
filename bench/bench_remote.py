"""Throughput of ``local-completions`` against a server with a fixed per-request latency, at
``num_concurrent`` 1, 4 and 16.

The server is tests/servers/openai_compat.py serving SmolLM2-135M (vLLM's response shapes)
with ``--delay`` seconds before each answer and ``--memo`` (a repeated request is answered from
memory), so after one warm-up pass its latency is the delay alone and the figures measure
evalfleet's client side: the pooled connections, the concurrent fan-out of each batch and the
coordinator around it. Each run is a fresh worker and coordinator (an empty answer store), on
arc_easy (``--limit`` docs, 0-shot), timed from CreateEvaluation to the job's end.

Run: ``.venv/bin/python bench/bench_remote.py [--limit 200] [--delay 0.2]``; the last line is
JSON with the rate at each concurrency and the efficiency at 16 (rate16 / (16 x rate1); target
0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc

from evalfleet.inference.server import load_backend, start_worker
from evalfleet.server.service import start_coordinator
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.8


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, delay: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "servers" / "openai_compat.py"), "--model",
         str(model_dir), "--served-name", "smol", "--port", str(port), "--delay", str(delay),
         "--memo"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"test server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("test server not ready after 900 s")


async def run_once(base_url: str, model_dir: Path, data_dir: str, concurrent: int,
                   limit: int) -> dict:
    model_args = {"model": "smol", "base_url": base_url, "api_key": "dummy",
                  "tokenizer": str(model_dir), "num_concurrent": concurrent,
                  "probe_interval_s": 86400}
    backend = await asyncio.to_thread(load_backend, "local-completions", model_args)
    worker = await start_worker(backend, model_args=model_args)
    coordinator, _ = await start_coordinator(workers=[worker.address], data_dir=data_dir)
    try:
        async with grpc.aio.insecure_channel(coordinator.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            started = time.perf_counter()
            evaluation = await stub.CreateEvaluation(cpb.CreateEvaluationRequest(
                spec=cpb.EvaluationSpec(model="local-completions", tasks=["arc_easy"],
                                        limit=limit, num_fewshot=0, bootstrap_iters=0)))
            async for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id)):
                pass
            wall = time.perf_counter() - started
            final = await stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id))
    finally:
        await coordinator.stop(0.5)
        await worker.stop(0.5)
    if final.state != cpb.EVALUATION_STATE_SUCCEEDED:
        raise SystemExit(f"num_concurrent={concurrent}: job failed: {final.error}")
    return {"num_concurrent": concurrent, "requests": final.unique_requests,
            "seconds": round(wall, 2), "rate": round(final.unique_requests / wall, 2)}


async def main_async(args: argparse.Namespace) -> dict:
    proc, base_url = start_server(args.model_dir, args.delay)
    try:
        warm = await run_once(base_url, args.model_dir, args.data_dir, 16, args.limit)
        print(f"warm-up (server computes each request once): {warm}", flush=True)
        runs = {}
        for concurrent in (1, 4, 16):
            runs[concurrent] = await run_once(base_url, args.model_dir, args.data_dir,
                                              concurrent, args.limit)
            print(runs[concurrent], flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    efficiency = runs[16]["rate"] / (16 * runs[1]["rate"])
    return {"bench": "remote", "task": "arc_easy", "limit": args.limit, "delay_s": args.delay,
            "requests": runs[1]["requests"], "ideal_rate_1": round(1 / args.delay, 2),
            "rate": {str(c): r["rate"] for c, r in runs.items()},
            "seconds": {str(c): r["seconds"] for c, r in runs.items()},
            "efficiency_16": round(efficiency, 3), "target_efficiency_16": TARGET,
            "meets_target": efficiency >= TARGET,
            "loadavg": open("/proc/loadavg").read().split()[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--model_dir", type=Path, default=REPO / "models" / "smollm2-135m")
    parser.add_argument("--data_dir", default=os.environ.get(
        "EVALFLEET_DATA_DIR", str(REPO.parent / "shared" / "data")))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = asyncio.run(main_async(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
