"""Whether a SQLite store's files can be written, asked without opening them."""

from __future__ import annotations

import errno
import os


def unwritable_file(path: str, address: str) -> str | None:
    """Which of the store's files (db, -wal, -shm) cannot be written, and why; None when all
    can (or the store is ``:memory:``).

    Asked with ``access(2)``, never by opening the files: closing any descriptor of a file
    drops every POSIX lock the process holds on it, SQLite's included, and then another
    process's connection that closes takes itself for the last one and deletes the WAL this
    process still writes to, its commits lost.
    """
    if path == ":memory:":
        return None
    for suffix in ("", "-wal", "-shm"):
        file = path + suffix
        if os.path.exists(file) and not os.access(file, os.W_OK):
            return (f"store {address}: {file} cannot be written ({os.strerror(_why(file))}); "
                    "nothing is lost: answers are kept and written once it can be")
    return None


def _why(file: str) -> int:
    """The errno an ``open(file, O_WRONLY)`` would fail with."""
    if os.statvfs(file).f_flag & os.ST_RDONLY:
        return errno.EROFS
    mode = os.stat(file).st_mode
    if os.geteuid() != 0 and not mode & 0o222:
        return errno.EACCES
    return errno.EPERM  # immutable or append-only (chattr +i / +a)
