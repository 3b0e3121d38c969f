"""``SqliteJobStore``: one SQLite file (or ``:memory:``), WAL, safe for several processes.

- Every sqlite call runs on one dedicated thread per store (its own connection), never on the
  event loop.
- ``journal_mode=WAL`` and ``synchronous=NORMAL``: a committed transaction survives the process
  being killed (``kill -9``) — it is in the WAL, in the OS's page cache — but the last
  transactions before a power loss or OS crash may roll back (the file is never corrupted).
  Readers never block the writer and the writer never blocks readers.
- Several processes may open the same file (two coordinators on one host): single-statement
  compare-and-set updates are atomic under SQLite's one-writer lock, multi-statement ones run in
  ``BEGIN IMMEDIATE`` transactions (the write lock is taken first, so a read never has to be
  upgraded), and a writer waits up to ``busy_timeout_s`` for another process's transaction.
  Leases and compare-and-set hold across processes. The file must be on a local disk (SQLite's
  locks are unreliable on network file systems); use PostgreSQL for coordinators on several
  hosts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from evalfleet.server.store.base import (
    ACTIVE_STATES,
    CANCELLED,
    JOB_COLUMNS,
    TERMINAL_STATES,
    JobRecord,
    StoreUnavailableError,
    StoreUnwritableError,
    job_from_row,
)
from evalfleet.server.store.sqlite_answers import PendingSlices, SqliteAnswers
from evalfleet.server.store.sqlite_batches import SqliteBatches
from evalfleet.server.store.sqlite_files import unwritable_file
from evalfleet.server.store.sqlite_keys import packed_request_keys, request_key
from evalfleet.server.store.sqlite_schema import SCHEMA_VERSION, migrate
from evalfleet.server.store.sqlite_schema import transaction as _transaction

__all__ = ["SCHEMA_VERSION", "SqliteJobStore", "packed_request_keys", "request_key"]

T = TypeVar("T")

_COLS = ", ".join(JOB_COLUMNS)
_ACTIVE = ", ".join(str(s) for s in ACTIVE_STATES)



class SqliteJobStore(SqliteAnswers, SqliteBatches):
    """SQLite-backed ``JobStore``; ``path`` is a file (created with its folder) or ``:memory:``."""

    def __init__(self, path: str | Path = ":memory:", *, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self.address = "sqlite::memory:" if self.path == ":memory:" else f"sqlite:///{self.path}"
        self.busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._models: dict[str, int] = {}  # fingerprint -> models.id (store thread only)
        # Answers waiting for the next grouped write, by (fingerprint, key width).
        self._slices: dict[tuple[str, int], list[PendingSlices]] = {}
        self._slice_writer: asyncio.Task | None = None

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the store's thread."""
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._with_conn, fn, args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """``_run`` for a write: the store's files are checked writable first, since SQLite
        writing to a WAL index it cannot grow (an immutable or read-only file) dies of SIGBUS
        instead of returning an error."""
        return await self._run(self._checked, fn, *args)

    def _checked(self, conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
        problem = self._unwritable_file()
        if problem is not None:
            raise StoreUnwritableError(problem)
        return fn(conn, *args)

    def _unwritable_file(self) -> str | None:
        return unwritable_file(self.path, self.address)

    async def write_problem(self) -> str | None:
        return None if self._closed else self._unwritable_file()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError(f"store {self.address} is closed")

    def _with_conn(self, fn: Callable[..., T], args: tuple) -> T:
        if self._conn is None:
            self._conn = self._connect()
        try:
            return fn(self._conn, *args)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreUnavailableError(
                    f"store {self.address}: still locked by another process after "
                    f"{self.busy_timeout_s:g} s ({exc})") from exc
            if any(why in str(exc) for why in _UNWRITABLE):
                raise StoreUnwritableError(f"store {self.address}: {exc}") from exc
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA page_size=65536")
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(
                f"store {self.address}: cannot open ({exc}); check the path is a writable "
                "file on a local disk") from exc
        try:
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreUnavailableError(
                f"store {self.address}: not a usable evalfleet SQLite store ({exc})") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrate(conn, self.address)

    async def open(self) -> None:
        await self._run(lambda _conn: None)

    async def close(self) -> None:
        if self._closed:
            return
        if self._slice_writer is not None:
            await asyncio.gather(self._slice_writer, return_exceptions=True)
        self._closed = True

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=False)

    # -- jobs ------------------------------------------------------------------------------------

    async def create_job(self, job: JobRecord) -> bool:
        def insert(c: sqlite3.Connection) -> bool:
            return c.execute(f"INSERT OR IGNORE INTO jobs ({_COLS}) VALUES "
                             f"({','.join('?' * len(JOB_COLUMNS))})", _job_values(job)
                             ).rowcount == 1
        return await self._write(insert)

    async def put_job(self, job: JobRecord) -> None:
        updates = ", ".join(f"{c}=excluded.{c}" for c in JOB_COLUMNS[1:])
        await self._write(lambda c: c.execute(
            f"INSERT INTO jobs ({_COLS}) VALUES ({','.join('?' * len(JOB_COLUMNS))}) "
            f"ON CONFLICT(id) DO UPDATE SET {updates}", _job_values(job)))

    async def get_job(self, job_id: str) -> JobRecord | None:
        row = await self._run(lambda c: c.execute(
            f"SELECT {_COLS} FROM jobs WHERE id=?", (job_id,)).fetchone())
        return job_from_row(row) if row else None

    async def list_jobs(self, limit: int = 0, states: Iterable[int] | None = None
                        ) -> list[JobRecord]:
        query, params = f"SELECT {_COLS} FROM jobs", []
        if states is not None:
            wanted = [int(s) for s in states]
            query += f" WHERE state IN ({','.join('?' * len(wanted))})"
            params.extend(wanted)
        query += " ORDER BY created_at DESC, id"
        if limit > 0:
            query += " LIMIT ?"
            params.append(int(limit))
        rows = await self._run(lambda c: c.execute(query, params).fetchall())
        return [job_from_row(r) for r in rows]

    # -- leases and compare-and-set ----------------------------------------------------------

    async def claim_job(self, job_id: str, owner: str, lease_s: float, *,
                        now: float | None = None) -> JobRecord | None:
        _check_owner(owner)

        def claim(c: sqlite3.Connection) -> JobRecord | None:
            t = time.time() if now is None else now
            row = c.execute(
                f"UPDATE jobs SET owner=?, lease_until=?, "
                f"attempts = attempts + (CASE WHEN owner=? THEN 0 ELSE 1 END) "
                f"WHERE id=? AND state IN ({_ACTIVE}) "
                f"AND (owner='' OR owner=? OR lease_until<=?) RETURNING {_COLS}",
                (owner, t + lease_s, owner, job_id, owner, t)).fetchone()
            return job_from_row(row) if row else None

        return await self._write(lambda c: _transaction(c, claim))

    async def claim_next(self, owner: str, lease_s: float, limit: int = 1, *,
                         now: float | None = None) -> list[JobRecord]:
        _check_owner(owner)

        def claim(c: sqlite3.Connection) -> list[JobRecord]:
            t = time.time() if now is None else now
            rows = c.execute(
                f"UPDATE jobs SET owner=?, lease_until=?, "
                f"attempts = attempts + (CASE WHEN owner=? THEN 0 ELSE 1 END) "
                f"WHERE id IN (SELECT id FROM jobs WHERE state IN ({_ACTIVE}) "
                f"AND (owner='' OR lease_until<=?) ORDER BY created_at, id LIMIT ?) "
                f"RETURNING {_COLS}", (owner, t + lease_s, owner, t, int(limit))).fetchall()
            return sorted((job_from_row(r) for r in rows), key=lambda j: (j.created_at, j.id))

        return await self._write(lambda c: _transaction(c, claim))

    async def list_claimable(self, now: float | None = None, limit: int = 0
                             ) -> list[JobRecord]:
        def query(c: sqlite3.Connection) -> list:
            t = time.time() if now is None else now
            return c.execute(
                f"SELECT {_COLS} FROM jobs WHERE state IN ({_ACTIVE}) "
                f"AND (owner='' OR lease_until<=?) ORDER BY created_at, id LIMIT ?",
                (t, int(limit) if limit > 0 else -1)).fetchall()

        return [job_from_row(r) for r in await self._run(query)]

    async def renew_lease(self, job_id: str, owner: str, lease_s: float, *,
                          now: float | None = None, progress: bytes | None = None) -> bool:
        _check_owner(owner)

        def renew(c: sqlite3.Connection) -> bool:
            t = time.time() if now is None else now
            return c.execute(f"UPDATE jobs SET lease_until=?, progress=COALESCE(?, progress) "
                             f"WHERE id=? AND owner=? AND state IN ({_ACTIVE})",
                             (t + lease_s, progress, job_id, owner)).rowcount == 1

        return await self._write(renew)

    async def release(self, job_id: str, owner: str) -> bool:
        _check_owner(owner)
        return await self._write(lambda c: c.execute(
            f"UPDATE jobs SET owner='', lease_until=0 WHERE id=? AND owner=? "
            f"AND state IN ({_ACTIVE})", (job_id, owner)).rowcount == 1)

    async def transition(self, job_id: str, owner: str, from_states: Iterable[int],
                         to_state: int, *, error: str = "", results: bytes | None = None,
                         results_json: str | None = None, progress: bytes | None = None
                         ) -> JobRecord | None:
        _check_owner(owner)
        froms = [int(s) for s in from_states]
        ends = to_state in TERMINAL_STATES

        def update(c: sqlite3.Connection) -> JobRecord | None:
            row = c.execute(
                f"UPDATE jobs SET state=?, error=?, updated_at=?, "
                f"results=COALESCE(?, results), results_json=COALESCE(?, results_json), "
                f"progress=COALESCE(?, progress), "
                f"lease_until=(CASE WHEN ? THEN 0 ELSE lease_until END) "
                f"WHERE id=? AND owner=? AND state IN ({','.join('?' * len(froms))}) "
                f"RETURNING {_COLS}",
                (int(to_state), error, time.time(), results, results_json, progress, ends,
                 job_id, owner, *froms)).fetchone()
            return job_from_row(row) if row else None

        return await self._write(lambda c: _transaction(c, update))

    async def cancel_job(self, job_id: str, error: str) -> JobRecord | None:
        def update(c: sqlite3.Connection) -> JobRecord | None:
            row = c.execute(
                f"UPDATE jobs SET state=?, error=?, updated_at=?, lease_until=0 "
                f"WHERE id=? AND state IN ({_ACTIVE}) RETURNING {_COLS}",
                (int(CANCELLED), error, time.time(), job_id)).fetchone()
            return job_from_row(row) if row else None

        return await self._write(lambda c: _transaction(c, update))

    async def put_results(self, job_id: str, owner: str, results: bytes,
                          results_json: str) -> bool:
        _check_owner(owner)
        return await self._write(lambda c: c.execute(
            f"UPDATE jobs SET results=?, results_json=?, updated_at=? WHERE id=? AND owner=? "
            f"AND state IN ({_ACTIVE})", (results, results_json, time.time(), job_id, owner)
        ).rowcount == 1)

    # -- samples ---------------------------------------------------------------------------------

    async def put_samples(self, job_id: str, owner: str,
                          records: Iterable[tuple[str, str]]) -> bool:
        _check_owner(owner)
        rows = [(job_id, i, task, rec) for i, (task, rec) in enumerate(records)]

        def write(c: sqlite3.Connection) -> bool:
            held = c.execute(f"SELECT 1 FROM jobs WHERE id=? AND owner=? AND state IN "
                             f"({_ACTIVE})", (job_id, owner)).fetchone()
            if held is None:
                return False
            c.execute("DELETE FROM samples WHERE job_id=?", (job_id,))
            c.executemany("INSERT INTO samples VALUES (?,?,?,?)", rows)
            return True

        return await self._write(lambda c: _transaction(c, write))

    async def _samples_page(self, job_id: str, after_seq: int, limit: int,
                            tasks: Sequence[str]) -> list[tuple[int, str, str]]:
        query = "SELECT seq, task, record FROM samples WHERE job_id=? AND seq>?"
        params: list[Any] = [job_id, after_seq]
        if tasks:
            query += f" AND task IN ({','.join('?' * len(tasks))})"
            params.extend(tasks)
        query += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return await self._run(lambda c: c.execute(query, params).fetchall())

#: SQLite's errors for a store it cannot write (answered UNAVAILABLE, never INTERNAL).
_UNWRITABLE = ("readonly database", "disk I/O error", "database or disk is full",
               "unable to open database file")


def _job_values(job: JobRecord) -> tuple:
    return tuple(getattr(job, c) for c in JOB_COLUMNS)


def _check_owner(owner: str) -> None:
    if not owner:
        raise ValueError("owner must be a non-empty coordinator id")
