"""README claims about running a fleet that had no test, each checked end to end on loopback:

- "a job without any worker for ``--no_worker_timeout`` (600 s) fails";
- clients pass ``EVALFLEET_AUTH_TOKEN[_FILE]`` and ``EVALFLEET_TLS_CA`` instead of
  ``--auth_token_file``/``--tls_ca``;
- a spec names an operator's sink and sets its per-job fields with ``--coordinator_sink
  name=...,run_name=...,registered_model=...,model_version=N``;
- "the same model at another URL is recomputed" (the answer cache of a remote model);
- "a server that cannot be reached when the worker starts stops the worker with UNAVAILABLE".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import pytest
from conftest import (
    DATA_DIR,
    REPO_ROOT,
    free_port,
    openai_test_server,
    recorded_requests,
    run_evaluation,
)

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

sys.path.insert(0, str(REPO_ROOT / "bench"))
from simworker import Script, start_simulated_worker  # noqa: E402

EVALFLEET = [sys.executable, "-m", "evalfleet.client.cli"]


def test_a_job_left_without_workers_fails_after_no_worker_timeout(background_loop, tmp_path):
    from evalfleet.client.cli import build_parser
    from evalfleet.client.serve import coordinator_options
    from evalfleet.server.service import start_coordinator
    from evalfleet.server.store import SqliteJobStore

    assert build_parser().parse_args(["serve", "coordinator"]).no_worker_timeout == 600.0
    worker, _ = background_loop.run(start_simulated_worker(Script(item_delay=0.02)))
    args = build_parser().parse_args([
        "serve", "coordinator", "--workers", worker.address, "--no_worker_timeout", "1",
        "--health_interval", "0.2", "--data_dir", str(DATA_DIR)])
    store = SqliteJobStore(tmp_path / "jobs.db")
    server, _ = background_loop.run(start_coordinator(options=coordinator_options(args),
                                                      store=store))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            job = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                tasks=["arc_easy"], limit=100, bootstrap_iters=0)), timeout=60)
            events = stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=job.id), timeout=60)
            for event in events:  # the job is running on its only worker: take it away
                if event.state == cpb.EVALUATION_STATE_RUNNING:
                    break
            stopped = time.monotonic()
            background_loop.run(worker.stop(0))
            for _ in events:
                pass
            final = stub.GetEvaluation(cpb.GetEvaluationRequest(id=job.id), timeout=10)
            waited = time.monotonic() - stopped
    finally:
        background_loop.run(server.stop(0.5))
        background_loop.run(store.close())
    assert final.state == cpb.EVALUATION_STATE_FAILED, final
    assert "no worker serving model" in final.error and "for 1 s" in final.error
    assert worker.address in final.error  # the workers it knew, and why they are out
    assert waited < 30


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from test_fleet_access import _pki

    return _pki(tmp_path_factory.mktemp("pki"))


def test_clients_take_token_and_ca_from_the_environment_and_name_an_operators_sink(
        background_loop, tiny_worker, pki, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient
    from test_fleet_access import TOKEN

    from evalfleet.client.cli import main
    from evalfleet.common.security import ServerSecurity
    from evalfleet.reporting.sinks.config import parse_sinks
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store, no server
    uri = f"file:{tmp_path / 'mlruns'}"
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # no ./mlflow.db default
        monkeypatch.setenv(name, uri)
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
    registry.create_registered_model("tiny")
    training = registry.create_run(registry.create_experiment("training"))
    version = registry.create_model_version("tiny", source=f"{training.info.artifact_uri}/m",
                                            run_id=training.info.run_id).version
    sinks = parse_sinks({"sinks": {"tracker": {"type": "mlflow", "tracking_uri": uri,
                                                "registered_models": ["tiny"]}}})
    options = CoordinatorOptions(
        workers=[tiny_worker.address], data_dir=DATA_DIR,
        security=ServerSecurity.from_files(token_file=str(pki["token"]),
                                           tls_cert=str(pki["server.pem"]),
                                           tls_key=str(pki["server.key"])))
    server, _ = background_loop.run(start_coordinator(options=options, sinks=sinks))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALFLEET_AUTH_TOKEN")}
    env.update(EVALFLEET_DATA_DIR=str(DATA_DIR), EVALFLEET_STRICT_SINKS="1",
               EVALFLEET_AUTH_TOKEN_FILE=str(pki["token"]), EVALFLEET_TLS_CA=str(pki["ca.pem"]))
    try:
        run = subprocess.run(
            [*EVALFLEET, "eval", "--coordinator", server.address, "--model", "hf",
             "--tasks", "arc_easy", "--limit", "2", "--bootstrap_iters", "0", "--no_progress",
             "--coordinator_sink",
             f"name=tracker,run_name=readme-run,registered_model=tiny,model_version={version}"],
            capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT)
        # EVALFLEET_AUTH_TOKEN (the token itself) in place of the file, and neither
        monkeypatch.delenv("EVALFLEET_AUTH_TOKEN_FILE", raising=False)
        monkeypatch.setenv("EVALFLEET_TLS_CA", str(pki["ca.pem"]))
        monkeypatch.setenv("EVALFLEET_AUTH_TOKEN", TOKEN)
        listed = main(["workers", "--coordinator", server.address, "--json"])
        out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        monkeypatch.delenv("EVALFLEET_AUTH_TOKEN")
        refused = main(["workers", "--coordinator", server.address, "--json"])
        refusal = capsys.readouterr().err
    finally:
        background_loop.run(server.stop(0.5))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "|arc_easy" in run.stdout
    assert listed == 0 and [json.loads(line)["address"] for line in out] == [
        tiny_worker.address]
    assert refused == 2 and "Traceback" not in refusal
    assert "requires a bearer token" in refusal and "$EVALFLEET_AUTH_TOKEN" in refusal
    # the operator's tracker got the run under the job's name, and tagged the job's model
    [mlflow_run] = [r for e in registry.search_experiments()
                    for r in registry.search_runs([e.experiment_id])
                    if r.data.tags.get("mlflow.runName") == "readme-run"]
    assert "arc_easy/acc" in mlflow_run.data.metrics
    tags = registry.get_model_version("tiny", version).tags
    assert tags["eval.mlflow_run_id"] == mlflow_run.info.run_id
    assert float(tags["eval.arc_easy.acc"]) == mlflow_run.data.metrics["arc_easy/acc"]


def test_the_same_model_at_another_url_is_recomputed(background_loop, tiny_model_dir,
                                                     tmp_path):
    """Two servers of one model, a worker on each, one coordinator and store: a job bound to
    the second is not answered from the first's answers; the same job on the first again is
    (it sends the server nothing)."""
    from evalfleet.inference.server import load_backend, start_worker
    from evalfleet.server.service import start_coordinator
    from evalfleet.server.store import SqliteJobStore

    servers, workers, fingerprints = [], [], []
    store = SqliteJobStore(tmp_path / "answers.db")
    coordinator = None
    try:
        for name in ("a", "b"):
            record = tmp_path / f"{name}.jsonl"
            servers.append(openai_test_server(tiny_model_dir, "--record", str(record)))
            servers[-1].record = record
            model_args = {"model": "smol", "base_url": servers[-1].base_url, "api_key": "k",
                          "tokenizer": str(tiny_model_dir), "probe_interval_s": 3600}
            backend = load_backend("local-completions", model_args)
            workers.append(background_loop.run(start_worker(backend, model_args=model_args)))
            fingerprints.append(backend.model_info().fingerprint)
        coordinator, _ = background_loop.run(start_coordinator(
            workers=[w.address for w in workers], store=store, data_dir=DATA_DIR))

        def sent_by_a_job_on(i: int) -> int:
            spec = cpb.EvaluationSpec(model="local-completions", tasks=["gsm8k"], limit=1,
                                      num_fewshot=0, bootstrap_iters=0,
                                      gen_kwargs="max_gen_toks=4",
                                      model_fingerprint=fingerprints[i])
            before = [_completions(srv) for srv in servers]
            final, _, _, _ = run_evaluation(coordinator.address, spec, timeout_s=300)
            assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
            sent = [_completions(srv) - b for srv, b in zip(servers, before, strict=True)]
            assert sent[1 - i] == 0  # the other worker's server was not asked
            return sent[i]

        first, other, again = sent_by_a_job_on(0), sent_by_a_job_on(1), sent_by_a_job_on(0)
    finally:
        for server in ([coordinator] if coordinator else []) + workers:
            background_loop.run(server.stop(0.5))
        background_loop.run(store.close())
        for srv in servers:
            srv.stop()
    assert fingerprints[0] != fingerprints[1]
    assert first > 0 and other == first  # recomputed in full at the other URL
    assert again == 0  # the first URL's answers are reused


def _completions(srv) -> int:
    """Generation requests a stand-in received (the logprob probe's scoring ones left out)."""
    return sum(1 for entry in recorded_requests(srv)
               if entry["path"] == "/v1/completions" and not entry["body"].get("echo"))


def test_a_server_unreachable_at_worker_start_stops_the_worker(background_loop, tiny_model_dir):
    from evalfleet.common.errors import UnavailableError
    from evalfleet.inference.server import load_backend, start_worker

    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = load_backend("local-completions", {"model": "smol", "base_url": url,
                                                 "tokenizer": str(tiny_model_dir),
                                                 "max_retries": 1})
    with pytest.raises(UnavailableError) as err:
        background_loop.run(start_worker(backend))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and url in err.value.message
    # `serve worker`: one line naming the server and what to check, and the process ends
    proc = subprocess.run(
        [*EVALFLEET, "serve", "worker", "--backend", "local-completions", "--model_args",
         f"model=smol,base_url={url},tokenizer={tiny_model_dir},max_retries=1",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR)})
    assert proc.returncode == 2
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert f"the server at {url} did not answer the logprob probe" in line
    assert "check base_url and that the server is running" in line
    assert "Traceback" not in proc.stderr
