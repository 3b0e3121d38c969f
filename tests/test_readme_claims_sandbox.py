"""README's sandbox limits, through ``check_programs`` (the path pass@k takes): "RLIMIT_FSIZE
16 MiB" and "at most 32 processes (RLIMIT_NPROC for non-root users; a per-program cgroup
``pids.max`` when root)". A program within each limit passes, one past it fails."""

from __future__ import annotations

from evalfleet.execution import allow_code_execution, check_programs
from evalfleet.execution.sandbox import DEFAULT_LIMITS

TEST = "assert add(2, 3) == 5"
ADD = "def add(a, b):\n    return a + b\n"


def _check(*completions: str) -> list[tuple[bool, str]]:
    with allow_code_execution():
        [results] = check_programs([TEST], [list(completions)])
    return [(r.passed, r.status) for r in results]


def _write(mib: int) -> str:
    return ADD + f"with open('big', 'wb') as f:\n    f.write(b'x' * ({mib} << 20))\n"


def _fork(n: int) -> str:
    """Start ``n`` processes that stay alive together, then wait for them (HF's guard leaves
    ``posix.fork``)."""
    return ADD + (
        "import posix, time\n"
        "children = []\n"
        f"for _ in range({n}):\n"
        "    pid = posix.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(0.5)\n"
        "        posix._exit(0)\n"
        "    children.append(pid)\n"
        "for pid in children:\n"
        "    posix.waitpid(pid, 0)\n")


def test_a_program_may_write_up_to_16_mib():
    assert DEFAULT_LIMITS.file_bytes == 16 << 20
    (full, status), (over, over_status) = _check(_write(16), _write(17))
    assert full, status
    assert not over and over_status == "failed: OSError: [Errno 27] File too large"


def test_a_program_may_run_at_most_32_processes():
    """24 children alive at once run; 40 cannot all start (as root the cgroup's pids.max is
    exact: the program and 31 children fit, a 32nd child does not)."""
    assert DEFAULT_LIMITS.max_processes == 32
    (fits, status), (over, over_status) = _check(_fork(24), _fork(40))
    assert fits, status
    assert not over and over_status == \
        "failed: BlockingIOError: [Errno 11] Resource temporarily unavailable"
