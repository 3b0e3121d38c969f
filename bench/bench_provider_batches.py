"""The batch part of bench/bench_remote.py (``--only batch``): ``batch_api=true`` jobs against
tests/servers/openai_compat.py's Files + Batches API (SmolLM2-135M, local-completions).

- ``batch_api_equal_to_online``: arc_easy (loglikelihood) and gsm8k 0-shot (generation,
  ``max_gen_toks=8``), ``--batch_limit`` docs each, run online and with ``batch_api=true`` on
  fresh coordinators (each its own empty store, so nothing is answered from the other): true
  when the metrics and every sample's values are equal (numbers within 1e-5 relative).
- ``batch_submissions_after_restart``: ``evalfleet serve coordinator`` as a process on a SQLite
  file; the stand-in holds batches; once the job's batch id is stored the coordinator is killed
  (SIGKILL) and started again on the same store and port; the batch is released and the job
  waited for. The value is the batches the stand-in created for the job (its own count,
  ``/control/stats``): 1 means the restarted coordinator resumed polling and submitted nothing
  again. ``batch_job_after_restart`` is that job's final state.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from evalfleet.inference.server import load_backend, start_worker
from evalfleet.server.service import start_coordinator
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

REPO = Path(__file__).resolve().parent.parent
#: The coordinators' poll interval here (EVALFLEET_BATCH_POLL_S).
POLL_S = "0.2"
TERMINAL = (cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED,
            cpb.EVALUATION_STATE_CANCELLED)


def _control(base_url: str, path: str, body: dict | None = None) -> Any:
    root = base_url.removesuffix("/v1")
    request = urllib.request.Request(
        root + path, method="GET" if body is None else "POST",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _submissions(base_url: str) -> int:
    return _control(base_url, "/control/stats")["batch_submissions"]


def _spec(model_args: dict, limit: int, *, batch_api: bool) -> cpb.EvaluationSpec:
    text = ",".join(f"{k}={v}" for k, v in model_args.items())
    return cpb.EvaluationSpec(
        model="local-completions", model_args=text + (",batch_api=true" if batch_api else ""),
        tasks=["arc_easy", "gsm8k"], limit=limit, num_fewshot=0, bootstrap_iters=0,
        log_samples=True, gen_kwargs="max_gen_toks=8")


async def _run_job(worker: str, data_dir: str, spec: cpb.EvaluationSpec) -> tuple[dict, dict]:
    """(results JSON, samples by task) of ``spec`` on a fresh coordinator (empty store)."""
    coordinator, _ = await start_coordinator(workers=[worker], data_dir=data_dir)
    try:
        async with grpc.aio.insecure_channel(coordinator.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            job = await stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec))
            async for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=job.id)):
                pass
            final = await stub.GetEvaluation(cpb.GetEvaluationRequest(id=job.id))
            if final.state != cpb.EVALUATION_STATE_SUCCEEDED:
                return {"error": final.error}, {}
            results = await stub.GetResults(cpb.GetResultsRequest(id=job.id))
            samples: dict[str, list] = {}
            async for record in stub.StreamSamples(cpb.StreamSamplesRequest(id=job.id)):
                samples.setdefault(record.task, []).append(json.loads(record.json))
    finally:
        await coordinator.stop(0.5)
    return json.loads(results.results_json), samples


def close_enough(a: Any, b: Any) -> bool:
    """Equal, but for numbers (or their strings, as in ``resps``) within 1e-5 relative: a
    local model's float32 logprobs move in the last digits with how requests are batched."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close_enough(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close_enough(a[k], b[k]) for k in a)
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    return isinstance(a, type(b)) and abs(x - y) <= 1e-5 * max(1.0, abs(y))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _coordinator(store: Path, worker: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "EVALFLEET_BATCH_POLL_S": POLL_S}
    with open(log, "a") as handle:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "evalfleet"), "serve", "coordinator", "--store",
             str(store), "--port", str(port), "--workers", worker, "--job_lease", "3",
             "--health_interval", "0.5"], env=env, stdout=subprocess.DEVNULL, stderr=handle)


def _wait(what: str, check, timeout_s: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if got := check():
                return got
        except (grpc.RpcError, sqlite3.Error):
            pass
        time.sleep(0.2)
    raise SystemExit(f"batch part: timed out waiting for {what}")


def _restart_part(base_url: str, worker: str, model_args: dict, limit: int) -> dict:
    """Kill -9 the coordinator while the batch is held; count submissions after the restart."""
    folder = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    store, log, port = folder / "store.db", folder / "coordinator.log", _free_port()
    address = f"127.0.0.1:{port}"
    _control(base_url, "/control/batches", {"hold": True})
    before = _submissions(base_url)
    proc = _coordinator(store, worker, port, log)
    try:
        spec = _spec(model_args, limit, batch_api=True)
        spec.tasks[:] = ["gsm8k"]

        def create() -> Any:
            with grpc.insecure_channel(address) as channel:
                return cpb_grpc.EvaluationServiceStub(channel).CreateEvaluation(
                    cpb.CreateEvaluationRequest(spec=spec), timeout=120)

        job = _wait("the coordinator to take the job", create)

        def submitted() -> bool:
            with sqlite3.connect(store) as conn:
                return conn.execute("SELECT COUNT(*) FROM provider_batches WHERE "
                                    "state = 'submitted'").fetchone()[0] == 1

        _wait("the batch id stored", submitted)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _control(base_url, "/control/batches", {"hold": False})
        proc = _coordinator(store, worker, port, log)
        time.sleep(1.0)
        _control(base_url, "/control/batches/release", {})

        def ended() -> cpb.Evaluation | None:
            with grpc.insecure_channel(address) as channel:
                got = cpb_grpc.EvaluationServiceStub(channel).GetEvaluation(
                    cpb.GetEvaluationRequest(id=job.id), timeout=10)
            return got if got.state in TERMINAL else None

        final = _wait("the job to end after the restart", ended)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        _control(base_url, "/control/batches", {"hold": False})
        _control(base_url, "/control/batches/release", {})
    return {"batch_submissions_after_restart": _submissions(base_url) - before,
            "batch_job_after_restart": cpb.EvaluationState.Name(final.state),
            "batch_job_error": final.error or None}


async def batch_part(base_url: str, model_dir: Path, data_dir: str, limit: int) -> dict:
    """The batch API keys of bench_remote.py's JSON line (see the module docstring)."""
    # The stand-in ends a released batch at once: poll it often (the default is 30 s).
    os.environ.setdefault("EVALFLEET_BATCH_POLL_S", POLL_S)
    model_args = {"model": "smol", "base_url": base_url, "api_key": "dummy",
                  "tokenizer": str(model_dir), "probe_interval_s": 86400}
    args = {**model_args, "batch_api": True}
    backend = await asyncio.to_thread(load_backend, "local-completions", args)
    worker = await start_worker(backend, model_args=args)
    try:
        before = _submissions(base_url)
        online = await _run_job(worker.address, data_dir, _spec(model_args, limit,
                                                                batch_api=False))
        started = time.perf_counter()
        batched = await _run_job(worker.address, data_dir, _spec(model_args, limit,
                                                                 batch_api=True))
        batch_seconds = time.perf_counter() - started
        submitted = _submissions(base_url) - before
        equal = ("error" not in online[0] and "error" not in batched[0]
                 and close_enough(online[0]["results"], batched[0]["results"])
                 and close_enough(online[1], batched[1]))
        restart = await asyncio.to_thread(_restart_part, base_url, worker.address, model_args,
                                          limit)
    finally:
        await worker.stop(0.5)
    return {"batch_limit": limit, "batch_api_equal_to_online": bool(equal),
            "batch_submissions_for_the_job": submitted,
            "batch_job_seconds": round(batch_seconds, 2),
            "batch_poll_s": float(os.environ["EVALFLEET_BATCH_POLL_S"]),
            "batch_errors": [r["error"] for r in (online[0], batched[0]) if "error" in r] or None,
            **restart}
