"""The ``evalfleet`` command line: standalone services, --coordinator runs, output files, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from conftest import DATA_DIR, REPO_ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc

EVALFLEET = [sys.executable, "-m", "evalfleet.client.cli"]
ENV = {**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*EVALFLEET, *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=REPO_ROOT)


def _wait_serving(address: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service exited early: {proc.stderr.read()}")
        try:
            with grpc.insecure_channel(address) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            time.sleep(0.5)
    raise AssertionError(f"{address} never became SERVING")


@pytest.fixture(scope="module")
def standalone_services(tiny_model_dir, tmp_path_factory):
    """``evalfleet serve worker`` and ``evalfleet serve coordinator`` as separate processes."""
    worker_port, coordinator_port = _free_port(), _free_port()
    db = tmp_path_factory.mktemp("coordinator") / "jobs.db"
    worker = subprocess.Popen(
        [*EVALFLEET, "serve", "worker", "--backend", "hf", "--model_args",
         f"pretrained={tiny_model_dir},dtype=float32", "--port", str(worker_port)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    coordinator = subprocess.Popen(
        [*EVALFLEET, "serve", "coordinator", "--port", str(coordinator_port), "--workers",
         f"127.0.0.1:{worker_port}", "--store", f"sqlite:///{db}"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_serving(f"127.0.0.1:{worker_port}", worker)
        _wait_serving(f"127.0.0.1:{coordinator_port}", coordinator)
        yield f"127.0.0.1:{coordinator_port}", worker, coordinator
    finally:
        for proc in (coordinator, worker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_eval_against_running_coordinator_writes_lm_eval_files(standalone_services, tmp_path):
    address, _, _ = standalone_services
    out = tmp_path / "out"
    result = _cli("eval", "--coordinator", address, "--model", "hf", "--tasks", "piqa",
                  "--limit", "4", "--output_path", str(out), "--log_samples", "--no_progress")
    assert result.returncode == 0, result.stderr
    assert "|piqa" in result.stdout and "acc_norm" in result.stdout
    folders = list(out.iterdir())
    assert len(folders) == 1
    results_files = list(folders[0].glob("results_*.json"))
    samples_files = list(folders[0].glob("samples_piqa_*.jsonl"))
    assert len(results_files) == 1 and len(samples_files) == 1
    date_id = results_files[0].stem.removeprefix("results_")
    assert samples_files[0].name == f"samples_piqa_{date_id}.jsonl"
    doc = json.loads(results_files[0].read_text())
    assert doc["results"]["piqa"]["sample_len"] == 4
    assert len(samples_files[0].read_text().splitlines()) == 4


def test_standalone_services_stop_gracefully_on_sigterm(tiny_model_dir, tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [*EVALFLEET, "serve", "coordinator", "--port", str(port), "--db",
         str(tmp_path / "jobs.db")], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    _wait_serving(f"127.0.0.1:{port}", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "server_started" for entry in logs)


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "arc_esay"], "did you mean"),
    (["--tasks", "piqa", "--model_args", "pretrained"], "--model_args"),
    (["--tasks", "piqa", "--batch_size", "lots"], "batch_size"),
    (["--tasks", "piqa", "--log_samples"], "--output_path"),
    (["--tasks", "piqa", "--seed", "1,2"], "--seed"),
    (["--tasks", "piqa", "--samples", '{"piqa": [1]}', "--limit", "3"], "--limit"),
    (["--tasks", "piqa", "--samples", "{piqa: 1}"], "--samples: not JSON"),
    (["--tasks", "piqa", "--samples", '{"piqa": 1}'], "list of document indices"),
])
def test_user_errors_are_one_line_without_traceback(args, needle):
    result = _cli("eval", "--model", "hf", *args, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and needle in lines[-1]
    assert "Traceback" not in result.stderr


def test_unreachable_coordinator_names_the_address():
    address = f"127.0.0.1:{_free_port()}"
    result = _cli("eval", "--coordinator", address, "--tasks", "piqa", timeout=120)
    assert result.returncode == 2
    assert address in result.stderr and "Traceback" not in result.stderr


def test_unknown_backend_is_invalid_argument(tiny_model_dir):
    result = _cli("eval", "--model", "hff", "--model_args", f"pretrained={tiny_model_dir}",
                  "--tasks", "piqa", "--limit", "1", timeout=120)
    assert result.returncode == 2
    assert "unknown backend 'hff'" in result.stderr and "'hf'" in result.stderr


def test_tasks_list_and_show():
    listing = _cli("tasks", "list", timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "arc_easy" in listing.stdout and "mmlu" in listing.stdout
    shown = _cli("tasks", "show", "arc_easy", timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "Question:" in shown.stdout and "Answer:" in shown.stdout


def test_readme_opens_with_the_setup_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    head = readme[:1500]
    assert head.index("make install") < head.index("make test") < head.index("make demo")
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make install" in ci and "make test" in ci


@pytest.fixture(scope="module")
def embedded_run(tiny_model_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """An embedded ``evalfleet eval --log_level DEBUG`` on a group (kobest: 5 tasks) and a task,
    its output piped (as in a CI log)."""
    out = tmp_path_factory.mktemp("embedded")
    result = _cli("eval", "--model", "hf", "--model_args",
                  f"pretrained={tiny_model_dir},dtype=float32", "--tasks", "kobest,arc_easy",
                  "--limit", "2", "--batch_size", "4", "--output_path", str(out),
                  "--log_samples", "--bootstrap_iters", "0", "--store", ":memory:",
                  "--log_level", "DEBUG")
    assert result.returncode == 0, result.stderr
    return result, out


def test_embedded_eval_prints_table_and_writes_files(embedded_run):
    result, out = embedded_run
    assert "embedded coordinator 127.0.0.1:" in result.stderr
    assert "|arc_easy|" in result.stdout.replace(" ", "")
    [folder] = list(out.iterdir())
    assert len(list(folder.glob("results_*.json"))) == 1
    assert len(list(folder.glob("samples_arc_easy_*.jsonl"))) == 1
    # The paths written are whole lines, however long (not wrapped at 80 columns).
    written = [line for line in result.stderr.splitlines() if line.startswith("wrote ")]
    assert {Path(line.removeprefix("wrote ")).parent for line in written} == {folder}


def test_piped_progress_is_plain_lines_of_documents_with_a_group_folded(embedded_run):
    stderr = embedded_run[0].stderr
    lines = [line for line in stderr.splitlines() if line.startswith("progress ")]
    assert lines, stderr
    assert lines[0].endswith("0/12 docs (0%), first batch computing | kobest 0/10 | arc_easy 0/2")
    # kobest's 5 tasks are one entry; 2 documents each (not their requests), and the total.
    assert lines[-1].endswith("12/12 docs (100%), done | kobest 10/10 | arc_easy 2/2")
    assert "━" not in stderr and not [line for line in lines if "kobest_" in line]


def test_debug_logs_of_an_embedded_run_are_one_format(embedded_run):
    """The CLI and its embedded worker's process share stderr: both log console lines (the
    worker's were JSON)."""
    stderr = embedded_run[0].stderr.splitlines()
    logs = [line for line in stderr
            if re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z \[\w+ *\] ", line)]
    assert not [line for line in stderr if line.startswith("{")]
    events = {line.split("]", 1)[1].split()[0] for line in logs}
    assert {"model_loaded", "job_created", "batch_done"} <= events  # worker's and coordinator's


@pytest.mark.parametrize(("argv", "deferred"), [(["eval", "--tasks", "x"], True),
                                                (["serve", "worker"], True),
                                                (["tasks", "list"], False)])
def test_the_command_exits_with_mains_code_after_a_deferred_startup(monkeypatch, argv,
                                                                      deferred):
    """The installed ``evalfleet`` command is ``console_main``: main's exit code, with the
    collector deferred through the start-up of the commands that load a model or serve."""
    import tomllib

    from evalfleet.client import cli

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["evalfleet"] == "evalfleet.client.cli:console_main"
    calls: list[str] = []
    monkeypatch.setattr(sys, "argv", ["evalfleet", *argv])
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 3)
    monkeypatch.setattr(cli.lifecycle, "defer_collection", lambda: calls.append("defer"))
    monkeypatch.setattr(cli.lifecycle, "exit_process", lambda code: calls.append(f"exit {code}"))
    cli.console_main()
    assert calls == (["defer"] if deferred else []) + ["main", "exit 3"]
