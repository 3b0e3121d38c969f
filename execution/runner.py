"""The child side of the sandbox: run one program the way HF's code_eval does.

Started as ``python -I -B runner.py PROGRAM TIMEOUT`` inside the sandbox (a throwaway working
directory, OS limits, no network). It reads a one-line nonce from stdin, then applies the same
guards as HF code_eval / human-eval (``reliability_guard``: destructive os/shutil/subprocess
functions disabled, ``exit``/``quit`` removed), swallows the program's I/O, runs it under a
``timeout``-second timer, and prints the nonce only if the program finished normally. A program
that exits early (``sys.exit``, ``os._exit``), raises, or runs out of time never prints it, so
it cannot pass by accident.
"""

import builtins
import contextlib
import faulthandler
import io
import os
import signal
import sys


class TimeoutException(Exception):
    """The program ran past its time."""


class _WriteOnly(io.StringIO):
    """A stream that can be written but never read (as human-eval's WriteOnlyStringIO)."""

    def read(self, *args, **kwargs):
        raise OSError

    def readline(self, *args, **kwargs):
        raise OSError

    def readlines(self, *args, **kwargs):
        raise OSError

    def readable(self, *args, **kwargs):
        return False


def _guard() -> None:
    """Disable what HF code_eval's reliability_guard disables (not a security boundary: the
    OS-level sandbox around this process is)."""
    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir",
                 "setuid", "fork", "forkpty", "killpg", "rename", "renames", "truncate",
                 "replace", "unlink", "fchmod", "fchown", "chmod", "chown", "chroot",
                 "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    import shutil
    import subprocess

    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


def main() -> None:
    path, timeout = sys.argv[1], float(sys.argv[2])
    nonce = sys.stdin.readline().strip()
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    out = os.fdopen(os.dup(1), "w")
    sink = _WriteOnly()
    sys.stdin = sink
    _guard()

    def on_alarm(signum, frame):
        raise TimeoutException("timed out")

    status = "passed"
    try:
        code = compile(source, "program.py", "exec")
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                exec(code, {"__name__": "__main__"})  # noqa: S102 - the point of a sandbox
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except TimeoutException:
        status = "timed out"
    except BaseException as exc:  # noqa: BLE001 - SystemExit counts as a failure, as in HF
        status = f"failed: {type(exc).__name__}: {exc}"[:500]
    if status == "passed":
        out.write(nonce + "\n")
    else:
        out.write(status.replace("\n", " ") + "\n")
    out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
