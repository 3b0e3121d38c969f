"""A throw-away PostgreSQL server for tests and benches: Debian's ``postgresql`` binaries,
``initdb`` into a temporary folder, listening on 127.0.0.1 on a free port (and a unix socket in
that folder), stopped and deleted by ``stop()``.

``initdb`` refuses to run as root, so as root every server command runs as the ``postgres``
system user (``runuser -u postgres --``), in a folder that user owns. Durability is off
(``fsync=off``) unless ``durable=True`` (benches): tests only ever hold throw-away data.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb`` (``$EVALFLEET_PG_BIN``
    first), or None."""
    if env := os.environ.get("EVALFLEET_PG_BIN"):
        return Path(env) if (Path(env) / "initdb").is_file() else None
    found = [p.parent for p in PG_ROOT.glob("*/bin/initdb") if os.access(p, os.X_OK)]
    return max(found, key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0],
               default=None)


def unavailable_reason() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if find_bin_dir() is None:
        return (f"PostgreSQL server binaries absent (no {PG_ROOT}/*/bin/initdb): "
                "`make install` installs Debian's postgresql package")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser to start PostgreSQL as another user"
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' user to run initdb as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One server; ``url`` is its superuser URL (user ``evalfleet``, no password)."""

    user = "evalfleet"

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.bin_dir = find_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="evalfleet-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run([*self._as_user, str(self.bin_dir / args[0]), *args[1:]], check=True,
                       capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        last: subprocess.CalledProcessError | None = None
        for _ in range(3):  # a free port may be taken before the server binds it
            self.port = _free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                       f"-c unix_socket_directories={self.root} -c max_connections=200")
            if not self.durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                          "-o", options, "-w", "-t", "60", "start")
                return self
            except subprocess.CalledProcessError as exc:
                last = exc
        log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() \
            else ""
        raise RuntimeError(f"PostgreSQL did not start: {last and last.stderr}\n{log[-2000:]}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            # FILE_COPY (PostgreSQL 15+) copies the tiny template faster than WAL_LOG.
            fast = conn.info.server_version >= 150000
            conn.execute(f'CREATE DATABASE "{name}"' + (" STRATEGY FILE_COPY" if fast else ""))
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop",
                          timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
