"""Secrets never leak (issue 24), for real: an ``api_key`` in ``model_args`` reaches the model
server it is for and nothing else.

A ``local-completions`` worker started with ``api_key=sk-test-secret`` (in process, beside a
coordinator with a SQLite store on disk) serves the tiny model through the stand-in
OpenAI-compatible server (tests/servers/openai_compat.py; a generative task, as the random
model fails the loglikelihood probe). ``evalfleet eval --coordinator``, run as a user runs it,
is given the same key in its ``--model_args`` (it does not send it: the worker has its own),
logs samples, writes lm-eval's files and logs to W&B (offline); the coordinator logs the job to
its MLflow tracker (a local file store). The server is sent the key; the secret is then looked
for in every place a user, another client or a tracker can read: the spec the coordinator
received, the results and samples files, the CLI's output, the coordinator's and worker's log
lines, GetEvaluation / ListEvaluations / WatchEvaluation / GetResults / StreamSamples answers,
the worker's GetModelInfo, the store's files and the trackers' files.

A worker may also take its key from its own environment (OPENAI_API_KEY): a job whose spec names
no key runs on it, the server receiving the worker's key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from conftest import DATA_DIR, REPO_ROOT, openai_test_server, run_evaluation

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc
from evalfleet.v1 import inference_pb2 as ipb
from evalfleet.v1 import inference_pb2_grpc as ipb_grpc

SECRET = "sk-test-secret"
ENV_SECRET = "sk-worker-env-key"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    record = tmp_path_factory.mktemp("record") / "requests.jsonl"
    srv = openai_test_server(tiny_model_dir, "--record", str(record))
    srv.record = record
    yield srv
    srv.stop()


def _authorizations(server) -> list[str | None]:
    if not server.record.exists():
        return []
    return [json.loads(line)["authorization"] for line in server.record.read_text().splitlines()]


def _files_holding(root: Path, secret: str) -> list[str]:
    """Files under ``root`` whose bytes hold ``secret`` (binary files included)."""
    return [str(p) for p in sorted(root.rglob("*"))
            if p.is_file() and secret.encode() in p.read_bytes()]


def _start(background_loop, backend, model_args, store=None, sinks=None):
    from evalfleet.inference.server import start_worker
    from evalfleet.server.service import start_coordinator

    worker = background_loop.run(start_worker(backend, model_args=model_args))
    coordinator, runner = background_loop.run(start_coordinator(
        workers=[worker.address], store=store, data_dir=DATA_DIR, sinks=sinks))
    received = coordinator.received = []  # the specs clients sent, as they arrived
    create = runner.create

    async def recording_create(spec):
        received.append(spec.SerializeToString())
        return await create(spec)

    runner.create = recording_create
    return worker, coordinator


def _api_answers(coordinator: str, worker: str) -> str:
    """Every answer a client can get about the jobs and the worker, as text."""
    parts = []
    with grpc.insecure_channel(coordinator) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        listed = stub.ListEvaluations(cpb.ListEvaluationsRequest(), timeout=30)
        assert listed.evaluations
        parts.append(str(listed))
        for evaluation in listed.evaluations:
            request_id = evaluation.id
            parts.append(str(stub.GetEvaluation(cpb.GetEvaluationRequest(id=request_id),
                                                timeout=30)))
            parts.extend(str(e) for e in stub.WatchEvaluation(
                cpb.WatchEvaluationRequest(id=request_id), timeout=60))
            parts.append(str(stub.GetResults(cpb.GetResultsRequest(id=request_id), timeout=30)))
            parts.extend(str(s) for s in stub.StreamSamples(
                cpb.StreamSamplesRequest(id=request_id), timeout=60))
        parts.append(str(stub.ListWorkers(cpb.ListWorkersRequest(), timeout=30)))
    with grpc.insecure_channel(worker) as channel:
        parts.append(str(ipb_grpc.InferenceServiceStub(channel).GetModelInfo(
            ipb.GetModelInfoRequest(), timeout=30)))
    return "\n".join(parts)


def test_an_api_key_reaches_the_model_server_and_no_file_log_answer_or_tracker(
        background_loop, server, tiny_model_dir, tmp_path, caplog, capfd, monkeypatch):
    import structlog

    from evalfleet.common.logging import configure_logging
    from evalfleet.inference.server import load_backend
    from evalfleet.reporting.sinks.config import parse_sinks
    from evalfleet.server.store import SqliteJobStore

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store, no server
    # the coordinator's tracker (the operator's; a job names it) is MLflow, the CLI's is W&B
    sinks = parse_sinks({"sinks": {"tracker": {
        "type": "mlflow", "tracking_uri": f"file:{tmp_path / 'mlruns'}"}}})
    caplog.set_level("DEBUG")
    model_args = {"model": "smol", "base_url": server.base_url, "api_key": SECRET,
                  "tokenizer": str(tiny_model_dir)}
    out = tmp_path / "out"
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    # capture_logs keeps structlog's level filter: an earlier test's CLI run may have set it
    # to WARNING (job_created is INFO), so every level is let through first
    configure_logging(json=True, level="DEBUG")
    with structlog.testing.capture_logs() as log_lines:
        backend = load_backend("local-completions", model_args)
        store = SqliteJobStore(store_dir / "jobs.db")
        worker, coordinator = _start(background_loop, backend, model_args, store, sinks)
        try:
            env = {**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR), "WANDB_MODE": "offline",
                   "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                   "EVALFLEET_STRICT_SINKS": "1"}
            cli = subprocess.run(
                [sys.executable, "-m", "evalfleet.client.cli", "eval", "--coordinator",
                 coordinator.address, "--model", "local-completions", "--model_args",
                 f"model=smol,base_url={server.base_url},api_key={SECRET},"
                 f"tokenizer={tiny_model_dir}", "--tasks", "gsm8k", "--limit", "2",
                 "--num_fewshot", "0", "--gen_kwargs", "max_gen_toks=4",
                 "--bootstrap_iters", "0", "--log_samples", "--output_path", str(out),
                 "--wandb_args", "project=secrets", "--coordinator_sink", "name=tracker",
                 "--no_progress", "--log_level", "DEBUG"],
                capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT)
            assert cli.returncode == 0, cli.stderr[-3000:]
            answers = _api_answers(coordinator.address, worker.address)
        finally:
            background_loop.run(coordinator.stop(0.5))
            background_loop.run(worker.stop(0.5))
            background_loop.run(store.close())
    # The key did its job: the model server was sent it.
    assert set(_authorizations(server)) == {f"Bearer {SECRET}"}
    # The run wrote what it should, with the key shown hidden.
    [results_file] = list(out.glob("*/results_*.json"))
    results = json.loads(results_file.read_text())
    assert results["config"]["model_args"]["api_key"] == "***"
    assert results["configs"]["gsm8k"]["metadata"]["api_key"] == "***"
    assert list(out.glob("*/samples_gsm8k_*.jsonl"))
    assert "'api_key': '***'" in cli.stdout  # the header line above the table
    assert list(tmp_path.glob("wandb/offline-run-*")) and (tmp_path / "mlruns").is_dir()
    [param] = list((tmp_path / "mlruns").glob("*/*/params/model_args.api_key"))
    assert param.read_text() == "***"
    # ... and nowhere else: the CLI did not even send it (the worker has its own).
    assert len(coordinator.received) == 1 and SECRET.encode() not in coordinator.received[0]
    assert "note: secrets in --model_args" in cli.stderr
    assert SECRET not in cli.stdout + cli.stderr
    assert any(e.get("event") == "job_created" for e in log_lines)  # the logs were seen
    assert SECRET not in repr(log_lines), [e for e in log_lines if SECRET in repr(e)]
    assert SECRET not in caplog.text + "".join(capfd.readouterr())
    assert SECRET not in answers
    for root in (out, store_dir, tmp_path / "wandb", tmp_path / "mlruns"):
        assert _files_holding(root, SECRET) == []


def test_a_worker_takes_its_key_from_its_environment(background_loop, server, tiny_model_dir,
                                                     monkeypatch):
    """The client sends no key: the worker's own (OPENAI_API_KEY) is used, and never shown."""
    from evalfleet.inference.server import load_backend

    monkeypatch.setenv("OPENAI_API_KEY", ENV_SECRET)
    model_args = {"model": "smol", "base_url": server.base_url, "tokenizer": str(tiny_model_dir)}
    backend = load_backend("local-completions", model_args)
    worker, coordinator = _start(background_loop, backend, model_args)
    sent_before = len(_authorizations(server))
    try:
        spec = cpb.EvaluationSpec(model="local-completions", tasks=["gsm8k"], limit=1,
                                  num_fewshot=0, bootstrap_iters=0, gen_kwargs="max_gen_toks=4",
                                  model_args=f"model=smol,base_url={server.base_url}")
        final, events, results, _ = run_evaluation(coordinator.address, spec, timeout_s=120)
        answers = _api_answers(coordinator.address, worker.address)
    finally:
        background_loop.run(coordinator.stop(0.5))
        background_loop.run(worker.stop(0.5))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    sent = _authorizations(server)[sent_before:]
    assert sent and set(sent) == {f"Bearer {ENV_SECRET}"}
    assert ENV_SECRET not in json.dumps(results) + answers + "".join(map(str, events))
