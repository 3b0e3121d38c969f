"""Weights & Biases and MLflow, for real: one ``evalfleet eval`` (tiny model, arc_easy) logs to a
W&B offline run, read back with wandb's own ``wandb leet inspect``, and to an ``mlflow server``
process on loopback (SQLite store), read back through MLflow's client, registered model version
tags included; then the coordinator logs a gRPC client's job to a sink from its configuration."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import DATA_DIR, REPO_ROOT

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.reporting.sinks.config import check_requests, parse_sinks
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

MODEL = "smollm2-registry"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with a SQLite backend store on a loopback port; stopped after."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("mlflow server did not answer /health in 600 s")
            time.sleep(1)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def model_version(mlflow_server):
    """A registered model with one version (made from a training run's artifact)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    client.create_registered_model(MODEL)
    training = client.create_run(client.create_experiment("training"))
    client.log_text(training.info.run_id, "weights", "model/README.txt")
    version = client.create_model_version(MODEL, source=f"{training.info.artifact_uri}/model",
                                          run_id=training.info.run_id)
    return version.version


@pytest.fixture(scope="module")
def cli_run(mlflow_server, model_version, tiny_model_dir, tmp_path_factory):
    """``evalfleet eval`` with --wandb_args (offline) and --mlflow_args, as a user runs it."""
    out = tmp_path_factory.mktemp("tracked")
    env = {**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(out),
           "WANDB_SILENT": "true", "EVALFLEET_STRICT_SINKS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "evalfleet.client.cli", "eval", "--model", "hf", "--model_args",
         f"pretrained={tiny_model_dir},dtype=float32", "--tasks", "arc_easy", "--limit", "4",
         "--log_samples", "--output_path", str(out / "results"),
         "--wandb_args", "project=evalfleet-tests,name=tiny-arc,job_type=eval",
         "--wandb_config_args", "team=platform",
         "--mlflow_args", f"tracking_uri={mlflow_server},experiment=evalfleet-tests,"
                          f"run_name=tiny-arc,registered_model={MODEL},"
                          f"model_version={model_version},team=platform",
         "--no_progress"],
        capture_output=True, text=True, env=env, timeout=900, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    [results_file] = list((out / "results").glob("*/results_*.json"))
    return out, json.loads(results_file.read_text()), result


def _wandb_inspect(*args: str) -> str:
    wandb_cli = shutil.which("wandb", path=str(Path(sys.executable).parent))
    result = subprocess.run([wandb_cli, "leet", "inspect", *args], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_wandb_offline_run_holds_what_lm_evals_logger_logs(cli_run):
    out, results, _ = cli_run
    [run_dir] = list((out / "wandb").glob("offline-run-*"))
    summary = json.loads(_wandb_inspect("--summary", "--json", str(run_dir)))
    assert (summary["project"], summary["name"], summary["state"]) == \
        ("evalfleet-tests", "tiny-arc", "finished")
    entry = results["results"]["arc_easy"]
    for metric in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
        assert summary["summary"][f"arc_easy/{metric}"] == pytest.approx(entry[f"{metric},none"])
    assert summary["summary"]["arc_easy/alias"] == "arc_easy"
    config = summary["config"]
    assert config["team"] == "platform"
    assert config["cli_configs"]["limit"] == 4 and config["task_configs"]["arc_easy"]["task"] \
        == "arc_easy"

    records = [json.loads(line) for line in _wandb_inspect("--json", str(run_dir)).splitlines()
               if line.startswith("{")]
    run_record = next(r["run"] for r in records if r["type"] == "run")
    assert run_record["job_type"] == "eval"
    artifacts = {(r["artifact"]["name"], r["artifact"]["type"]) for r in records
                 if r["type"] == "artifact"}
    assert {("results", "eval_results"), ("arc_easy", "samples_by_task")} <= artifacts
    tables = run_dir / "files" / "media" / "table"
    [results_table] = list((tables / "evaluation").glob("eval_results_*.table.json"))
    table = json.loads(results_table.read_text())
    assert table["columns"] == ["Tasks", "Version", "Filter", "num_fewshot", "Metric", "Value",
                                "Stderr"]
    acc_row = next(row for row in table["data"] if row[4] == "acc")
    assert acc_row[0] == "arc_easy" and float(acc_row[5]) == pytest.approx(entry["acc,none"])
    [samples_table] = list(tables.glob("arc_easy_eval_results_*.table.json"))
    samples = json.loads(samples_table.read_text())
    assert len(samples["data"]) == 4
    assert {"id", "data", "choices", "labels", "raw_predictions", "filtered_predictions",
            "acc", "acc_norm"} <= set(samples["columns"])


def test_mlflow_run_and_model_version_hold_the_metrics(cli_run, mlflow_server, model_version):
    from mlflow.tracking import MlflowClient

    _, results, result = cli_run
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("evalfleet-tests")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny-arc" and run.info.status == "FINISHED"
    entry = results["results"]["arc_easy"]
    assert run.data.metrics["arc_easy/acc"] == pytest.approx(entry["acc,none"])
    assert run.data.metrics["arc_easy/acc_norm_stderr"] == pytest.approx(
        entry["acc_norm_stderr,none"])
    assert run.data.params["limit"] == "4.0" and run.data.params["model"] == "hf"
    assert run.data.params["model_args.pretrained"].endswith("tiny-smollm2")
    assert run.data.tags["team"] == "platform"
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "results.json" in paths and "samples" in paths
    [samples] = client.list_artifacts(run.info.run_id, "samples")
    assert samples.path == "samples/samples_arc_easy.jsonl"
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "results.json"))
                        .read_text())
    assert logged["results"] == results["results"]
    tags = client.get_model_version(MODEL, model_version).tags
    assert float(tags["eval.arc_easy.acc"]) == pytest.approx(entry["acc,none"], rel=1e-5)
    assert float(tags["eval.arc_easy.acc_norm.stderr"]) == pytest.approx(
        entry["acc_norm_stderr,none"], rel=1e-5)
    assert tags["eval.mlflow_run_id"] == run.info.run_id
    assert f"tagged {MODEL} v{model_version}" in result.stderr


def test_sink_configuration_is_checked():
    sinks = parse_sinks({"sinks": {"registry": {"type": "mlflow", "tracking_uri": "http://x",
                                                "registered_models": ["a"]},
                                   "wb": {"type": "wandb", "project": "p"}}})
    check_requests([cpb.SinkRequest(name="registry", registered_model="a", model_version="1")],
                   sinks)
    bad = [
        ([cpb.SinkRequest(name="elsewhere")], "spec.sinks[0].name: 'elsewhere' is not a sink"),
        ([cpb.SinkRequest(name="registry", registered_model="b", model_version="1")],
         "'b' is not among"),
        ([cpb.SinkRequest(name="registry", registered_model="a")], "go together"),
        ([cpb.SinkRequest(name="wb", registered_model="a", model_version="1")],
         "only mlflow sinks"),
    ]
    for requests, message in bad:
        with pytest.raises(InvalidArgumentError, match=re.escape(message)):
            check_requests(requests, sinks)
    for config, message in [({"sinks": {"m": {"type": "mlflow"}}}, "needs tracking_uri"),
                            ({"sinks": {"w": {"type": "wandb", "dir": "/etc"}}}, "dir"),
                            ({"sinks": {"x": {"type": "ftp"}}}, "type")]:
        with pytest.raises(InvalidArgumentError, match=message):
            parse_sinks(config)


def test_coordinator_logs_a_grpc_clients_job_to_a_configured_sink(
        background_loop, tiny_worker, mlflow_server, model_version, tmp_path):
    """A remote client names a sink and per-job fields; the tracking URI is the operator's."""
    from mlflow.tracking import MlflowClient

    from evalfleet.reporting.sinks.config import load_sinks_config
    from evalfleet.server.service import start_coordinator
    from evalfleet.server.store import SqliteJobStore

    config = tmp_path / "sinks.yaml"
    config.write_text(f"sinks:\n  registry:\n    type: mlflow\n    tracking_uri: {mlflow_server}"
                      f"\n    experiment: coordinator-jobs\n    registered_models: [{MODEL}]\n")
    store = SqliteJobStore(tmp_path / "jobs.db")
    server, _ = background_loop.run(start_coordinator(
        workers=[tiny_worker.address], store=store, data_dir=DATA_DIR,
        sinks=load_sinks_config(config)))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=3, log_samples=True)
            spec.sinks.append(cpb.SinkRequest(name="registry", run_name="grpc-job",
                                              registered_model=MODEL,
                                              model_version=str(model_version),
                                              tags={"submitted_by": "ci"}))
            with pytest.raises(grpc.RpcError) as info:
                bad = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=1)
                bad.sinks.append(cpb.SinkRequest(name="registry", registered_model="other",
                                                 model_version="1"))
                stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=bad), timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "spec.sinks[0].registered_model" in info.value.details()
            evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec),
                                               timeout=120)
            messages = [e.message for e in stub.WatchEvaluation(
                cpb.WatchEvaluationRequest(id=evaluation.id), timeout=600)]
            final = stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id), timeout=10)
            results = json.loads(stub.GetResults(cpb.GetResultsRequest(id=evaluation.id),
                                                 timeout=30).results_json)
    finally:
        background_loop.run(server.stop(0.5))
        background_loop.run(store.close())
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    logged = [m for m in messages if m.startswith("sink registry: logged run ")]
    assert logged, messages
    run_id = logged[0].rsplit(" ", 1)[1]
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.run_name == "grpc-job" and run.data.tags["submitted_by"] == "ci"
    assert run.data.tags["evalfleet.evaluation_id"] == evaluation.id
    assert run.data.metrics["arc_easy/acc"] == pytest.approx(
        results["results"]["arc_easy"]["acc,none"])
    assert client.get_experiment(run.info.experiment_id).name == "coordinator-jobs"
    assert client.get_model_version(MODEL, model_version).tags["eval.mlflow_run_id"] == run_id


def test_gate_tags_the_model_version_with_its_verdict(mlflow_server, model_version, tmp_path,
                                                      capsys):
    """``evalfleet gate --mlflow_args ...`` sets the verdict and the sha256 of the policy file
    on the registered model version; a version the registry lacks is one line, exit 2."""
    import hashlib

    from mlflow.tracking import MlflowClient
    from results_files import mc_record, results_doc, write_run

    from evalfleet.client.cli import main

    def run(name: str, period: int) -> Path:
        rights = [i % period == 0 for i in range(400)]
        acc = sum(rights) / 400
        doc = results_doc({"arc_easy": {"acc,none": (acc, 0.02)}}, n=400)
        return write_run(tmp_path / name, "2026-12-06T10-00-00.000001", doc, samples={
            "arc_easy": [mc_record(i, r) for i, r in enumerate(rights)]})

    policy = REPO_ROOT / "examples" / "gate.yaml"
    client = MlflowClient(mlflow_server)
    base, same, worse = run("a", 2), run("b", 2), run("c", 4)
    mlflow_args = f"tracking_uri={mlflow_server},registered_model={MODEL},model_version="
    for candidate, code, verdict in ((same, 0, "GO"), (worse, 1, "NO-GO")):
        assert main(["gate", "--policy", str(policy), str(base), str(candidate),
                     "--mlflow_args", mlflow_args + str(model_version)]) == code
        assert f"gate.verdict={verdict}" in capsys.readouterr().err
        tags = client.get_model_version(MODEL, model_version).tags
        assert tags["gate.verdict"] == verdict
        assert tags["gate.policy_sha256"] == hashlib.sha256(policy.read_bytes()).hexdigest()
        assert (tags["gate.baseline"], tags["gate.candidate"]) == (str(base), str(candidate))
    assert main(["gate", "--policy", str(policy), str(base), str(same),
                 "--mlflow_args", mlflow_args + "99"]) == 2
    assert capsys.readouterr().err == (f"error: mlflow: registered model '{MODEL}' has no "
                                       f"version 99 at {mlflow_server}\n")
