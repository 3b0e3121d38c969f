"""What isolation this machine allows for running generated code, probed once per process.

Layers, strongest available first:

- ``bwrap`` (bubblewrap): the program sees the host read-only, a private ``/tmp`` and its own
  writable working directory; new network, PID and IPC namespaces (no network at all, no other
  processes visible); it dies with its parent.
- ``unshare``: a new network namespace only (``unshare --net`` as root, or inside a new user
  namespace otherwise): no network, but the file system is the host's.
- ``none``: OS limits only (below); the program can reach the network and the file system.

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
import tempfile
from dataclasses import dataclass
from pathlib import Path

_PIDS_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


@dataclass(frozen=True)
class Isolation:
    """The isolation this process can give a program."""

    method: str  # "bwrap" | "unshare" | "none"
    prefix: tuple[str, ...]  # command prefix before the python command (bwrap adds binds later)
    pids_cgroup: Path | None  # parent folder for per-program pids cgroups, when writable
    network_isolated: bool
    filesystem_readonly: bool

    def describe(self) -> str:
        """One line for logs and the README's table."""
        parts = [f"method={self.method}",
                 f"network={'none' if self.network_isolated else 'host'}",
                 f"filesystem={'read-only + private /tmp' if self.filesystem_readonly else 'host'}",
                 f"process cap={'cgroup pids.max' if self.pids_cgroup else 'RLIMIT_NPROC'}"]
        return ", ".join(parts)


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _python_under_tmp() -> list[str]:
    """The folders a sandboxed program needs from the host that lie under /tmp (they would
    vanish behind the sandbox's private /tmp): this Python's installation (a venv or
    interpreter there) and this package's folder (the program runner), outermost first."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                           os.path.dirname(os.path.dirname(sys.executable)),
                                           os.path.dirname(os.path.abspath(__file__)))}
    under = sorted(p for p in paths if p.startswith("/tmp/"))
    return [p for p in under if not any(p.startswith(q + "/") for q in under if q != p)]


def bwrap_args(workdir: str) -> list[str]:
    """bubblewrap arguments: read-only host, private /tmp (this Python's and this package's
    folders under /tmp mounted back read-only), the workdir writable, no network."""
    python = [arg for path in _python_under_tmp() for arg in ("--ro-bind", path, path)]
    return ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            *python, "--bind", workdir, workdir, "--chdir", workdir, "--unshare-net",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
            "--new-session", "--"]


def _probe_bwrap() -> bool:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    with tempfile.TemporaryDirectory(prefix="evalfleet-probe-") as d:
        return _works([bwrap, *bwrap_args(d), sys.executable, "-I", "-c", "pass"])


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
    if _probe_bwrap():
        return Isolation("bwrap", (shutil.which("bwrap") or "bwrap",), pids, True, True)
    prefix = _unshare_prefix()
    if prefix is not None:
        return Isolation("unshare", prefix, pids, True, False)
    return Isolation("none", (), pids, False, False)
