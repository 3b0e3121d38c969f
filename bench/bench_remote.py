"""Throughput of ``local-completions`` against a server with a fixed per-request latency, at
``num_concurrent`` 1, 4 and 16.

The server is tests/servers/openai_compat.py serving SmolLM2-135M (vLLM's response shapes)
with ``--delay`` seconds before each answer and ``--memo`` (a repeated request is answered from
memory), so after one warm-up pass its latency is the delay alone and the figures measure
evalfleet's client side: the pooled connections, the concurrent fan-out of each batch and the
coordinator around it. Each run is a fresh worker and coordinator (an empty answer store), on
arc_easy (``--limit`` docs, 0-shot), timed from CreateEvaluation to the job's end.

Adaptive concurrency (``--only adaptive`` runs this part alone): the same server in
``--max-concurrent N`` mode (429 with ``Retry-After: 1`` to a call arriving while N are being
answered, N unknown to the client; scripted chat answers after ``--delay``, no model) and
``local-chat-completions`` on ``arc_easy@generate`` (``--adaptive_limit`` docs): a fixed
``num_concurrent=N`` (the reference), the adaptive backend under a ceiling of 4N, a fixed
``num_concurrent=4N``, and two jobs (arc_easy@generate, arc_challenge@generate) at once on one
adaptive worker. ``adaptive_efficiency`` is adaptive / reference throughput (target 0.8) and
``fixed_overload_failed_or_slower`` says whether the fixed 4N run failed or was slower than the
adaptive one; ``fair_share_ratio`` is the slower job's rate over the faster's (target 0.75).
``requests_per_s`` and ``tokens_per_s`` are the adaptive job's throughput against that
rate-limited stand-in, its tokens (prompt + completion) as the stand-in itself counted them
(``/admin/stats``); each run in ``adaptive_runs`` carries its own (``run_requests_per_s``,
``run_tokens_per_s``).

Provider batch APIs (``--only batch`` runs this part alone; bench/bench_provider_batches.py):
``batch_api_equal_to_online`` (a batch_api=true job's results equal the online job's) and
``batch_submissions_after_restart`` (batches the stand-in created for a job whose coordinator
was killed -9 while its batch was held, then restarted on the same store; target 1).

Run: ``.venv/bin/python bench/bench_remote.py [--limit 200] [--delay 0.2] [--only
adaptive|fixed|batch]``; the last line is JSON with the rate at each concurrency and the
efficiency at 16 (rate16 / (16 x rate1); target 0.8), the adaptive keys and the batch keys above.
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
from bench_provider_batches import batch_part  # bench/ is sys.path[0] when run

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


def start_server(model_dir: Path, delay: float, *extra: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "servers" / "openai_compat.py"), "--model",
         str(model_dir), "--served-name", "smol", "--port", str(port), "--delay", str(delay),
         *(extra or ("--memo",))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


async def timed_jobs(stub, specs: list) -> list[dict]:
    """Run ``specs`` at once on a coordinator; each job's requests, seconds, rate and state."""

    async def one(spec) -> dict:
        started = time.perf_counter()
        evaluation = await stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec))
        async for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id)):
            pass
        wall = time.perf_counter() - started
        final = await stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id))
        ok = final.state == cpb.EVALUATION_STATE_SUCCEEDED
        return {"task": list(spec.tasks), "failed": not ok, "error": final.error[:200] or None,
                "requests": final.unique_requests, "seconds": round(wall, 2),
                "rate": round(final.unique_requests / wall, 2) if ok else 0.0}

    return list(await asyncio.gather(*(one(s) for s in specs)))


async def run_chat(base_url: str, data_dir: str, concurrent: int, adaptive: bool,
                   tasks: list[str], limit: int) -> list[dict]:
    """Jobs of ``tasks`` (one job each, at once) on a fresh local-chat-completions worker."""
    model_args = {"model": "smol", "base_url": f"{base_url}/chat/completions",
                  "num_concurrent": concurrent, "adaptive_concurrency": adaptive}
    backend = await asyncio.to_thread(load_backend, "local-chat-completions", model_args)
    worker = await start_worker(backend, model_args=model_args)
    coordinator, _ = await start_coordinator(workers=[worker.address], data_dir=data_dir)
    try:
        async with grpc.aio.insecure_channel(coordinator.address) as channel:
            specs = [cpb.EvaluationSpec(model="local-chat-completions", tasks=[t], limit=limit,
                                        num_fewshot=0, bootstrap_iters=0,
                                        apply_chat_template=True) for t in tasks]
            jobs = await timed_jobs(cpb_grpc.EvaluationServiceStub(channel), specs)
    finally:
        await coordinator.stop(0.5)
        await worker.stop(0.5)
    for job in jobs:
        job.update(num_concurrent=concurrent, adaptive=adaptive)
        print(job, flush=True)
    return jobs


def server_stats(base_url: str) -> dict:
    """The stand-in's own counts so far (its ``/admin/stats``: 429s answered, and the tokens
    its answers reported under ``usage``)."""
    with urllib.request.urlopen(f"{base_url.removesuffix('/v1')}/admin/stats", timeout=10) as r:
        return json.load(r)


async def counted(base_url: str, run) -> list[dict]:
    """``await run``, each job marked with the 429s the server answered meanwhile, and the
    run's requests/s and tokens/s (prompt and completion tokens the server reported, over the
    run's wall time: its longest job)."""
    before = server_stats(base_url)
    jobs = await run
    after = server_stats(base_url)
    tokens = sum(after["usage"][k] - before["usage"][k]
                 for k in ("prompt_tokens", "completion_tokens"))
    seconds = max(job["seconds"] for job in jobs)
    for job in jobs:
        job["server_429s_during_run"] = after["rate_limited"] - before["rate_limited"]
        job["run_tokens"] = tokens
        job["run_requests_per_s"] = round(sum(j["requests"] for j in jobs) / seconds, 2)
        job["run_tokens_per_s"] = round(tokens / seconds, 1)
    return jobs


async def adaptive_part(args: argparse.Namespace) -> dict:
    """Fixed N, adaptive under 4N, fixed 4N and two adaptive jobs against a server that
    answers 429 above N calls in progress."""
    n = args.server_limit
    proc, base_url = start_server(args.model_dir, args.adaptive_delay,
                                  "--max-concurrent", str(n))
    task, other = "arc_easy@generate", "arc_challenge@generate"
    try:
        [ref] = await counted(base_url, run_chat(base_url, args.data_dir, n, False, [task],
                                                 args.adaptive_limit))
        [adaptive] = await counted(base_url, run_chat(base_url, args.data_dir, 4 * n, True,
                                                      [task], args.adaptive_limit))
        [overload] = await counted(base_url, run_chat(base_url, args.data_dir, 4 * n, False,
                                                      [task], args.adaptive_limit))
        pair = await counted(base_url, run_chat(base_url, args.data_dir, 4 * n, True,
                                                [task, other], args.adaptive_limit))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    efficiency = adaptive["rate"] / ref["rate"] if ref["rate"] else None
    rates = [j["rate"] for j in pair]
    fair = min(rates) / max(rates) if max(rates) else None
    return {"server_limit": n, "adaptive_delay_s": args.adaptive_delay,
            # the server's own bound (N / latency); the coordinator's and client's CPU time
            # per request keeps every run below it on a busy machine
            "server_ideal_rate": round(n / args.adaptive_delay, 2),
            "adaptive_vs_ideal": round(adaptive["rate"] * args.adaptive_delay / n, 3),
            "adaptive_runs": {"fixed_n": ref, "adaptive_4n": adaptive, "fixed_4n": overload,
                              "two_jobs_adaptive": pair},
            "adaptive_efficiency": round(efficiency, 3) if efficiency is not None else None,
            "adaptive_failed_requests": adaptive["failed"],
            "fixed_overload_failed_or_slower": overload["failed"]
            or overload["rate"] < adaptive["rate"],
            "fair_share_ratio": round(fair, 3) if fair is not None else None,
            # throughput of the adaptive job against the rate-limited stand-in: requests/s, and
            # tokens/s as the stand-in itself counted them (prompt + completion)
            "requests_per_s": adaptive["run_requests_per_s"],
            "tokens_per_s": adaptive["run_tokens_per_s"],
            "fair_share_ok": fair is not None and fair >= 0.75 and not any(
                j["failed"] for j in pair)}


async def main_async(args: argparse.Namespace) -> dict:
    out: dict = {"bench": "remote"}
    if args.only in (None, "fixed"):
        out.update(await fixed_part(args))
    if args.only in (None, "adaptive"):
        out.update(await adaptive_part(args))
    else:
        out.update(adaptive_efficiency=None, fixed_overload_failed_or_slower=None,
                   requests_per_s=None, tokens_per_s=None)
    if args.only in (None, "batch"):
        proc, base_url = start_server(args.model_dir, 0.0, "--memo")
        try:
            out.update(await batch_part(base_url, args.model_dir, args.data_dir,
                                        args.batch_limit))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    else:
        out.update(batch_api_equal_to_online=None, batch_submissions_after_restart=None)
    out.update(loadavg=Path("/proc/loadavg").read_text().split()[:3])
    return out


async def fixed_part(args: argparse.Namespace) -> dict:
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
    return {"task": "arc_easy", "limit": args.limit, "delay_s": args.delay,
            "requests": runs[1]["requests"], "ideal_rate_1": round(1 / args.delay, 2),
            "rate": {str(c): r["rate"] for c, r in runs.items()},
            "seconds": {str(c): r["seconds"] for c, r in runs.items()},
            "efficiency_16": round(efficiency, 3), "target_efficiency_16": TARGET,
            "meets_target": efficiency >= TARGET}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("fixed", "adaptive", "batch"), default=None,
                        help="run one part (default all)")
    parser.add_argument("--batch_limit", type=int, default=4,
                        help="docs per task in the batch part")
    parser.add_argument("--server_limit", type=int, default=4,
                        help="N: the rate-limited server's concurrent calls")
    parser.add_argument("--adaptive_delay", type=float, default=0.075,
                        help="the rate-limited server's latency per call")
    parser.add_argument("--adaptive_limit", type=int, default=400,
                        help="docs per job in the adaptive part")
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
