"""What isolation this machine allows for running generated code, probed once per process.

Layers, strongest available first:

- ``bwrap`` (bubblewrap): the program sees only what its interpreter needs, read-only: this
  Python's folders (its prefixes, standard library and site-packages), the system's shared
  libraries (``/usr/lib``, ``/lib``...), ``/etc/ld.so.cache`` and the runner script; besides them
  a minimal ``/dev``, its own ``/proc``, a private ``/tmp`` and its own writable working
  directory. No other host file (no ``/etc/shadow``, no home directory, no checkout, no data)
  exists for it. New network, PID, IPC and UTS namespaces (no network at all, no other process
  visible); every capability dropped, as root too; it dies with its parent.
- ``unshare``: a new network namespace only (``unshare --net`` as root, or inside a new user
  namespace otherwise): no network, but the file system and the processes are the host's.
- ``none``: OS limits only (below); the program can reach the network and the file system.

The last two are weak (``Isolation.risks``): a coordinator refuses code tasks under them unless
its operator accepts that with ``--allow_weak_sandbox`` (``policy.check_sandbox``).

Always: a fresh throwaway working directory, its own session and process group, rlimits on CPU
time, address space, file size, core dumps and (for non-root users) number of processes, and a
wall-clock timeout. As root RLIMIT_NPROC does not bind, so the number of processes is capped by
a per-program cgroup ``pids.max`` when the pids controller is writable (cgroup v1 or v2).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_PIDS_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
#: Shared-library folders the interpreter's extension modules load from (those that exist).
_LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32",
                 "/lib", "/lib64", "/lib32", "/libx32")
#: Host files a program may read besides them: the dynamic linker's cache (library paths only).
_HOST_FILES = ("/etc/ld.so.cache",)
#: Folders too wide to expose whole even when an interpreter's prefix is one of them.
_TOO_WIDE = ("/", "/tmp", "/home", "/root", "/etc", "/var", "/opt", "/srv", "/mnt")
#: What a program can do to the host under each weak method.
_RISKS = {
    "unshare": "a program can read and write every file this user can (the host's file system "
               "is not hidden) and signal or kill this user's processes, the coordinator "
               "included (e.g. through ctypes); only the network is cut off",
    "none": "a program can read and write every file this user can, signal or kill this "
            "user's processes, the coordinator included, and reach the network",
}


@dataclass(frozen=True)
class Isolation:
    """The isolation this process can give a program."""

    method: str  # "bwrap" | "unshare" | "none"
    prefix: tuple[str, ...]  # command prefix before the python command (bwrap adds binds later)
    pids_cgroup: Path | None  # parent folder for per-program pids cgroups, when writable
    network_isolated: bool
    filesystem_readonly: bool
    note: str = ""  # why bubblewrap is not used, when it is not

    @property
    def weak(self) -> bool:
        """Whether a program can touch host files or processes (anything but bubblewrap)."""
        return self.method != "bwrap"

    def risks(self) -> str:
        """What a program can do to the host under this method ('' for bubblewrap)."""
        return _RISKS.get(self.method, "") if self.weak else ""

    def describe(self) -> str:
        """One line for logs and the README's table."""
        files = ("interpreter's folders read-only + private /tmp" if self.filesystem_readonly
                 else "host (read-write)")
        parts = [f"method={self.method}",
                 f"network={'none' if self.network_isolated else 'host'}",
                 f"filesystem={files}",
                 f"process cap={'cgroup pids.max' if self.pids_cgroup else 'RLIMIT_NPROC'}"]
        if self.note:
            parts.append(f"bubblewrap: {self.note}")
        return ", ".join(parts)


def _works(cmd: list[str]) -> bool:
    return _failure(cmd) is None


def _failure(cmd: list[str]) -> str | None:
    """None when ``cmd`` runs and exits 0; otherwise one line saying why not."""
    try:
        run = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if run.returncode == 0:
        return None
    lines = run.stderr.decode("utf-8", "replace").strip().splitlines()
    return f"exit status {run.returncode}" + (f": {lines[-1][:200]}" if lines else "")


def python_paths() -> list[str]:
    """This interpreter's folders, as absolute paths and as their real paths: its prefixes
    (a venv's and its base interpreter's), standard library and site-packages. A prefix too
    wide to expose (``/``, a home directory...) is left out: its library folders stand in."""
    home = os.path.expanduser("~")
    wide = {*_TOO_WIDE, home, os.path.dirname(home)}
    scheme = sysconfig.get_paths()
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),
                  *(scheme[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")
                    if k in scheme)]
    out = []
    for path in candidates:
        for form in (os.path.abspath(path), os.path.realpath(path)):
            if form not in wide and os.path.isdir(form):
                out.append(form)
    return out


def _outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` without duplicates and without those inside another, sorted."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(p.startswith(q.rstrip("/") + "/") for q in unique)]


def bwrap_args(workdir: str, readonly: Iterable[str] = ()) -> list[str]:
    """bubblewrap arguments that show a program only what its interpreter needs, read-only
    (``python_paths``, the shared libraries, ``readonly``: e.g. the runner script), a minimal
    /dev, its own /proc, a private /tmp and ``workdir`` writable; no network, no other
    process, no capability."""
    args = ["--tmpfs", "/tmp"]  # first: binds below may lie under /tmp (a venv, a checkout)
    binds = [*python_paths(), *(os.path.abspath(p) for p in readonly),
             *(f for f in _HOST_FILES if os.path.exists(f))]
    for path in _LIBRARY_DIRS:
        if os.path.islink(path):  # a merged /usr: /lib -> usr/lib
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            binds.append(path)
    for path in _outermost(binds):
        args += ["--ro-bind", os.path.realpath(path), path]
    return [*args, "--dev", "/dev", "--proc", "/proc", "--bind", workdir, workdir,
            "--chdir", workdir, "--unshare-net", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--"]


def _probe_bwrap() -> str | None:
    """None when bubblewrap runs this Python confined; otherwise why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap not found on PATH"
    with tempfile.TemporaryDirectory(prefix="evalfleet-probe-") as d:
        failure = _failure([bwrap, *bwrap_args(d), sys.executable, "-I", "-c", "pass"])
    return None if failure is None else f"{bwrap} does not run here ({failure})"


def _unshare_prefix() -> tuple[str, ...] | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    candidates = [(unshare, "--net", "--")] if os.geteuid() == 0 else []
    candidates.append((unshare, "--user", "--map-root-user", "--net", "--"))
    for prefix in candidates:
        if _works([*prefix, sys.executable, "-I", "-c", "pass"]):
            return prefix
    return None


def _pids_root() -> Path | None:
    if os.geteuid() != 0:
        return None
    for root in _PIDS_ROOTS:
        if not (root / "cgroup.procs").exists():
            continue
        if root.name == "cgroup" and not (root / "cgroup.controllers").exists():
            continue  # /sys/fs/cgroup as a tmpfs of v1 hierarchies
        parent = root / "evalfleet-sandbox"
        try:
            parent.mkdir(exist_ok=True)
            if root.name != "pids" and "pids" not in (root / "cgroup.subtree_control").read_text():
                (root / "cgroup.subtree_control").write_text("+pids")
            probe = parent / f"probe-{os.getpid()}"
            probe.mkdir()
            ok = (probe / "pids.max").exists()
            probe.rmdir()
        except OSError:
            continue
        if ok:
            return parent
    return None


@functools.cache
def detect() -> Isolation:
    """Probe bubblewrap, unshare and the pids cgroup once; the result is cached."""
    pids = _pids_root()
    note = _probe_bwrap()
    if note is None:
        return Isolation("bwrap", (shutil.which("bwrap") or "bwrap",), pids, True, True)
    prefix = _unshare_prefix()
    if prefix is not None:
        return Isolation("unshare", prefix, pids, True, False, note)
    return Isolation("none", (), pids, False, False, note)
