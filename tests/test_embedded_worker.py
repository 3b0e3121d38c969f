"""``evalfleet eval`` without ``--coordinator`` runs its worker in a child process
(``client/embedded_worker.py``, ``inference/embedded.py``): the command itself never imports
torch, the worker's errors arrive as they were, and neither process outlives the other."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from conftest import DATA_DIR, REPO_ROOT

from evalfleet.common import errors

ENV = {**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1"}


def _eval_argv(model_dir: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
            "--batch_size", "4", "--device", "cpu", "--store", ":memory:", "--no_progress",
            *extra]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _start_until_serving(argv: list[str]) -> tuple[subprocess.Popen, int, list[str]]:
    """Start the command; read its stderr up to the embedded services' line: (process, the
    worker's pid, the lines read)."""
    proc = subprocess.Popen([sys.executable, "-m", "evalfleet.client.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=REPO_ROOT)
    lines: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        found = re.search(r"embedded coordinator .*\(pid (\d+)\)", line)
        if found:
            return proc, int(found.group(1)), lines
    proc.wait()
    raise AssertionError(f"no embedded services line: {''.join(lines)}")


def test_the_command_imports_no_model_library_and_its_worker_ends_with_it(tiny_model_dir,
                                                                          tmp_path):
    argv = _eval_argv(tiny_model_dir, "--tasks", "arc_easy", "--limit", "2")
    script = ("import sys\nfrom evalfleet.client.cli import main\n"
              f"code = main({argv!r})\n"
              "print('model libraries imported:', sorted({'torch', 'transformers'} & "
              "set(sys.modules)))\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "|arc_easy|" in proc.stdout.replace(" ", "")
    assert "model libraries imported: []" in proc.stdout
    pid = int(re.search(r"\(pid (\d+)\)", proc.stderr).group(1))
    assert not _alive(pid)


def test_the_cli_module_parses_its_flags_before_loading_the_task_engine():
    """The worker starts once the flags are parsed: importing the CLI loads neither the
    metrics' Numba kernels nor torch."""
    out = subprocess.run([sys.executable, "-c", "import sys, evalfleet.client.cli, "
                          "evalfleet.client.eval_command\nprint(sorted({'numba', 'torch', "
                          "'evalfleet.tasks.manager'} & set(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_start_up_error_of_the_worker_is_the_error_it_was(tiny_model_dir, tmp_path, capsys):
    """A model that cannot load fails the command with the backend's own one-line message."""
    from evalfleet.client.cli import main
    from evalfleet.inference.server import load_backend

    missing = tmp_path / "no-model"
    with pytest.raises(errors.InvalidArgumentError) as raised:
        load_backend("hf", {"pretrained": str(missing), "device": "cpu"})
    argv = _eval_argv(missing, "--tasks", "arc_easy", "--limit", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {raised.value.message}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT])
def test_the_worker_does_not_outlive_the_command(tiny_model_dir, stop):
    """Killed (its stdin closes) or interrupted (it closes its stdin), the command's worker
    process ends too; an interrupted command says so."""
    proc, pid, _ = _start_until_serving(
        _eval_argv(tiny_model_dir, "--tasks", "arc_easy", "--limit", "400"))
    try:
        assert _alive(pid)
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=60)
        assert _wait_gone(pid), "the worker outlived its command"
        if stop == signal.SIGINT:
            assert proc.returncode == 130 and "interrupted" in err
    finally:
        proc.kill()
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_worker_that_dies_during_the_run_ends_the_command_with_why(tiny_model_dir):
    """The worker's death is not waited out (a fleet coordinator would wait for another
    worker): the command stops at once and says what happened and what was kept."""
    proc, pid, _ = _start_until_serving(
        _eval_argv(tiny_model_dir, "--tasks", "arc_easy", "--limit", "400"))
    try:
        os.kill(pid, signal.SIGSTOP)  # no answer can come back from here on
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert (f"error: the embedded worker's process (pid {pid}) ended with code -9 during the "
            "evaluation") in err
    assert "the store was :memory:, so its answers were not kept" in err


@pytest.mark.parametrize("cls", [errors.InvalidArgumentError, errors.NotFoundError,
                                 errors.UnavailableError, errors.FailedPreconditionError,
                                 errors.PermissionDeniedError, errors.ResourceExhaustedError])
def test_an_error_crosses_the_process_boundary_as_itself(cls):
    code, message = errors.status_for(cls("the field x: why"))
    again = errors.error_for_status(code.name, message)
    assert type(again) is cls and again.message == "the field x: why"


def test_an_unexpected_error_keeps_its_status():
    code, message = errors.status_for(ValueError("boom"))
    again = errors.error_for_status(code.name, message)
    assert again.code == grpc.StatusCode.INTERNAL and "ValueError: boom" in again.message


def test_a_worker_still_loading_is_stopped_at_once(tiny_model_dir):
    """A command that fails while its worker loads (an unknown task, a bad store) stops the
    worker by SIGTERM instead of waiting for a model it will not use."""
    from evalfleet.client.embedded_worker import EmbeddedWorker
    from evalfleet.inference.embedded import WorkerSettings

    async def start_and_stop() -> int:
        worker = await EmbeddedWorker.start(WorkerSettings(
            backend="hf", model_args={"pretrained": str(tiny_model_dir), "device": "cpu"}))
        await worker.stop()
        return worker.returncode

    assert asyncio.run(start_and_stop()) == -signal.SIGTERM


def test_a_serving_worker_stops_when_its_stdin_closes(tiny_model_dir):
    """The end of a run: the served worker exits by itself (code 0) once told."""
    from evalfleet.client.embedded_worker import EmbeddedWorker
    from evalfleet.inference.embedded import WorkerSettings

    async def serve_and_stop() -> tuple[str, int]:
        worker = await EmbeddedWorker.start(WorkerSettings(
            backend="hf", model_args={"pretrained": str(tiny_model_dir), "device": "cpu"},
            device="cuda:99"))
        serving = await worker.ready()
        await worker.stop()
        return serving, worker.returncode

    serving, code = asyncio.run(serve_and_stop())
    assert code == 0
    assert serving.address.startswith("127.0.0.1:")
    # lm-eval's --device rule, applied where torch is: a GPU this machine lacks falls back
    import torch

    fallback = "cuda" if torch.cuda.is_available() else "cpu"
    assert (serving.device, serving.note) == (
        fallback, f"--device cuda:99 is not available here; using {fallback} (as lm-eval does)")


def test_a_data_error_met_while_the_model_loads_is_reported_by_the_plan(
        tiny_model_dir, tmp_path, capsys):
    """The command loads one task's documents while its worker loads the model (a head start
    for the data loader); an error there is not the command's: the coordinator's plan meets
    it again and the command fails with the data error, naming the file searched."""
    from evalfleet.client.cli import main

    (tmp_path / "nosplit.yaml").write_text(
        "task: nosplit\ndataset_path: allenai/ai2_arc\ndataset_name: ARC-Easy\n"
        "output_type: multiple_choice\ntest_split: nosuch\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_target: "{{choices.label.index(answerKey)}}"\n'
        'doc_to_choice: "{{choices.text}}"\n')
    argv = _eval_argv(tiny_model_dir, "--tasks", "nosplit", "--include_path", str(tmp_path),
                      "--limit", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "split 'nosuch' of task 'nosplit' not found" in err
    assert "ARC-Easy/nosuch.jsonl" in err
    assert "Traceback" not in err
