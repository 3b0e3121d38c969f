"""Run one generated program in its own process, in a throwaway directory, under OS limits.

``run_program`` blocks its calling thread (never call it on an event loop); ``run_programs``
runs many in parallel, one subprocess each, across the machine's cores.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from evalfleet.execution.isolation import Isolation, bwrap_args, detect

RUNNER = Path(__file__).resolve().parent / "runner.py"
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
#: Longest status kept from a program's output (its only trace that leaves the sandbox).
STATUS_CHARS = 200


@dataclass(frozen=True)
class Limits:
    """Per-program limits.

    ``timeout`` is the program's own run time (HF code_eval's 3 s timer, started after the
    interpreter is up); ``wall_grace`` is the extra wall-clock time allowed for start-up before
    the whole sandbox is killed. ``cpu_seconds`` defaults to ``ceil(timeout) + 2``.
    """

    timeout: float = 3.0
    wall_grace: float = 10.0
    cpu_seconds: int | None = None
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    max_processes: int = 32
    output_bytes: int = 64 << 10


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one program: ``passed`` only when it ran to its end within its time."""

    passed: bool
    status: str  # "passed" | "timed out" | "failed: ..."
    returncode: int | None
    seconds: float


def _rlimits(limits: Limits) -> list[tuple[int, int]]:
    import resource

    cpu = limits.cpu_seconds or math.ceil(limits.timeout) + 2
    out = [(resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, limits.memory_bytes),
           (resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_CORE, 0)]
    if os.geteuid() != 0:
        out.append((resource.RLIMIT_NPROC, _user_tasks() + limits.max_processes))
    return out


def _user_tasks() -> int:
    """Tasks (threads included) this uid runs now: RLIMIT_NPROC counts them all."""
    uid, count = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid == uid:
                count += sum(1 for _ in (entry / "task").iterdir())
    return count


def _prlimit_prefix(limits: Limits) -> list[str] | None:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return None
    import resource

    names = {resource.RLIMIT_CPU: "--cpu", resource.RLIMIT_AS: "--as",
             resource.RLIMIT_FSIZE: "--fsize", resource.RLIMIT_CORE: "--core",
             resource.RLIMIT_NPROC: "--nproc"}
    return [prlimit, *(f"{names[r]}={v}" for r, v in _rlimits(limits)), "--"]


class _Cgroup:
    """A per-program pids cgroup (caps the number of processes; kills them all at the end)."""

    def __init__(self, parent: Path, max_processes: int) -> None:
        self.path = parent / f"run-{uuid.uuid4().hex[:12]}"
        self.path.mkdir()
        (self.path / "pids.max").write_text(str(max_processes))

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def kill_all(self) -> None:
        for _ in range(200):
            try:
                pids = [int(p) for p in self.procs.read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.02)


def _command(iso: Isolation, workdir: str, program: Path, limits: Limits,
             cgroup: _Cgroup | None) -> tuple[list[str], bool]:
    """The command line, and whether rlimits must be set in a preexec hook instead."""
    cmd = [sys.executable, "-I", "-B", str(RUNNER), str(program), repr(limits.timeout)]
    if iso.method == "bwrap":
        cmd = [iso.prefix[0], *bwrap_args(workdir, readonly=[str(RUNNER)]), *cmd]
    elif iso.method == "unshare":
        cmd = [*iso.prefix, *cmd]
    prlimit = _prlimit_prefix(limits)
    if prlimit is not None:
        cmd = prlimit + cmd
    if cgroup is not None:  # join the cgroup before anything else runs
        cmd = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup.procs), *cmd]
    return cmd, prlimit is None


def _read_tail(fh, limit: int) -> str:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - limit))
    return fh.read().decode("utf-8", "replace")


def short_status(line: str) -> str:
    """``line`` (written by the runner, or forged by the program on its stdout) as one short
    line of printable characters, at most ``STATUS_CHARS`` long."""
    text = "".join(c if c.isprintable() else " " for c in line).strip()
    return text if len(text) <= STATUS_CHARS else text[:STATUS_CHARS - 3] + "..."


def run_program(program: str, limits: Limits = DEFAULT_LIMITS,
                isolation: Isolation | None = None) -> ExecutionResult:
    """Run ``program`` (Python source) to completion, a failure, or its timeout."""
    iso = isolation or detect()
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="evalfleet-exec-")
    cgroup = _Cgroup(iso.pids_cgroup, limits.max_processes) if iso.pids_cgroup else None
    proc: subprocess.Popen | None = None
    try:
        path = Path(workdir) / "program.py"
        path.write_text(program, encoding="utf-8")
        cmd, need_preexec = _command(iso, workdir, path, limits, cgroup)
        preexec = None
        if need_preexec:
            import resource

            rl = _rlimits(limits)

            def preexec() -> None:
                for res, value in rl:
                    resource.setrlimit(res, (value, value))

        nonce = secrets.token_hex(16)
        env = {**_ENV, "HOME": workdir, "TMPDIR": workdir}
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.DEVNULL, cwd=workdir, env=env,
                                    start_new_session=True, preexec_fn=preexec)
            timed_out = False
            try:
                proc.communicate(input=(nonce + "\n").encode(),
                                 timeout=limits.timeout + limits.wall_grace)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill(proc, cgroup)
                proc.wait()
            lines = [x for x in _read_tail(out, limits.output_bytes).splitlines() if x.strip()]
        last = lines[-1].strip() if lines else ""
        if timed_out:
            status = "timed out"
        elif last == nonce and proc.returncode == 0:
            status = "passed"
        elif last.startswith(("failed:", "timed out")):
            status = short_status(last)
        elif proc.returncode and proc.returncode < 0:
            status = f"failed: killed by {signal.Signals(-proc.returncode).name}"
        else:
            status = f"failed: exit status {proc.returncode}"
        return ExecutionResult(status == "passed", status, proc.returncode,
                               time.monotonic() - started)
    finally:
        if proc is not None:
            _kill(proc, cgroup)
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(workdir, ignore_errors=True)


def _kill(proc: subprocess.Popen, cgroup: _Cgroup | None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if cgroup is not None:
        cgroup.kill_all()


def default_workers() -> int:
    """Programs run at once: one per core."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))


def run_programs(programs: Sequence[str], limits: Limits = DEFAULT_LIMITS,
                 workers: int | None = None) -> list[ExecutionResult]:
    """Run every program (each in its own sandboxed process), ``workers`` at a time, in
    order of the input. Blocks the calling thread: call it from a worker thread."""
    if not programs:
        return []
    iso = detect()
    with ThreadPoolExecutor(max_workers=workers or default_workers(),
                            thread_name_prefix="evalfleet-exec") as pool:
        return list(pool.map(lambda p: run_program(p, limits, iso), programs))
