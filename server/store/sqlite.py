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
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from evalfleet.server.store.base import (
    ACTIVE_STATES,
    CANCELLED,
    JOB_COLUMNS,
    TERMINAL_STATES,
    AnswerSlices,
    JobRecord,
    JobStore,
    StoreSchemaError,
    StoreUnavailableError,
    StoreUnwritableError,
    job_from_row,
)

T = TypeVar("T")

_COLS = ", ".join(JOB_COLUMNS)
_ACTIVE = ", ".join(str(s) for s in ACTIVE_STATES)

# Migration 1 is the layout of evalfleet's first store (files written before leases existed
# open unchanged); 2 adds lease ownership; 3 gives answers compact keys (see
# _compact_answer_keys); 4 keeps each job's progress (NULL for the jobs already stored). Each
# runs once, in order, in one transaction.
_MIGRATIONS: list[tuple[int, list[str | Callable[[sqlite3.Connection], None]]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY, spec BLOB NOT NULL, state INTEGER NOT NULL, error TEXT NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, results BLOB, results_json TEXT)""",
        """CREATE TABLE IF NOT EXISTS answers (
            fingerprint TEXT NOT NULL, request_id TEXT NOT NULL, answer BLOB NOT NULL,
            PRIMARY KEY (fingerprint, request_id)) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS samples (
            job_id TEXT NOT NULL, seq INTEGER NOT NULL, task TEXT NOT NULL, record TEXT NOT NULL,
            PRIMARY KEY (job_id, seq)) WITHOUT ROWID""",
    ]),
    (2, [
        "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at)",
        "CREATE INDEX IF NOT EXISTS jobs_by_lease ON jobs (state, lease_until)",
    ]),
    (3, [lambda c: _compact_answer_keys(c)]),
    (4, ["ALTER TABLE jobs ADD COLUMN progress BLOB"]),
]
SCHEMA_VERSION = _MIGRATIONS[-1][0]


class SqliteJobStore(JobStore):
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
        self._slices: dict[tuple[str, int], list[_Slices]] = {}
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
        """Which of the store's files (db, -wal, -shm) cannot be opened for writing, and why."""
        if self.path == ":memory:":
            return None
        for suffix in ("", "-wal", "-shm"):
            file = self.path + suffix
            try:
                os.close(os.open(file, os.O_WRONLY))
            except FileNotFoundError:
                continue
            except OSError as exc:
                return (f"store {self.address}: {file} cannot be written ({exc.strerror}); "
                        "nothing is lost: answers are kept and written once it can be")
        return None

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
        def step(c: sqlite3.Connection) -> None:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version "
                      "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
            current = c.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version"
                                ).fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreSchemaError(
                    f"store {self.address} has schema version {current}, newer than this "
                    f"evalfleet's ({SCHEMA_VERSION}); upgrade evalfleet")
            for version, statements in _MIGRATIONS:
                if version > current:
                    for statement in statements:
                        if callable(statement):
                            statement(c)
                        else:
                            c.execute(statement)
                    c.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))

        _transaction(conn, step)

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

    # -- answers ---------------------------------------------------------------------------------

    def _model_id(self, c: sqlite3.Connection, fingerprint: str, *, create: bool) -> int | None:
        """The small integer that stands for ``fingerprint`` in the answers table."""
        found = self._models.get(fingerprint)
        if found is None:
            if create:
                c.execute("INSERT OR IGNORE INTO models (fingerprint) VALUES (?)", (fingerprint,))
            row = c.execute("SELECT id FROM models WHERE fingerprint=?", (fingerprint,)
                            ).fetchone()
            if row is None:
                return None
            found = self._models[fingerprint] = row[0]
        return found

    async def get_answers(self, fingerprint: str, request_ids: Iterable[str]
                          ) -> dict[str, bytes]:
        by_key = {request_key(rid): rid for rid in request_ids}
        keys = list(by_key)

        def select(c: sqlite3.Connection) -> dict[str, bytes]:
            model = self._model_id(c, fingerprint, create=False)
            found: dict[str, bytes] = {}
            if model is None:
                return found
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start:start + _LOOKUP_CHUNK]
                found.update((by_key[key], answer) for key, answer in c.execute(
                    f"SELECT request, answer FROM answers WHERE model=? "
                    f"AND request IN ({','.join('?' * len(chunk))})", (model, *chunk)))
            return found

        return await self._run(select) if keys else {}

    async def put_answers(self, fingerprint: str, answers: Iterable[tuple[str, bytes]]
                          ) -> int:
        # Keys are made here: on the store's thread they would cost more, the thread taking
        # the GIL back from the event loop for them (measured with bench/bench_fleet.py).
        rows = [(request_key(rid), blob) for rid, blob in answers]

        def insert(c: sqlite3.Connection) -> int:
            # The model's row is committed first (autocommit), so a number cached here always
            # names a row every process sees.
            model = self._model_id(c, fingerprint, create=True)

            def write(c: sqlite3.Connection) -> int:
                before = c.total_changes
                c.executemany(f"INSERT OR IGNORE INTO answers VALUES ({model},?,?)", rows)
                return c.total_changes - before

            return _transaction(c, write)

        return await self._write(insert) if rows else 0

    async def put_answer_slices(self, fingerprint: str, answers: AnswerSlices) -> None:
        # Batches that return while a write runs are written together by the next one (group
        # commit), each write one INSERT ... SELECT that cuts every row from three buffers:
        # SQLite works through it without the GIL, where executemany takes the GIL back from
        # the event loop for every row it binds (measured with bench/bench_fleet.py).
        packed = packed_request_keys(answers.ids)
        lengths = answers.ends - answers.starts
        if packed is None or int(lengths.max(initial=0)) >= _SLICE_LENGTH_LIMIT:
            return await super().put_answer_slices(fingerprint, answers)
        self._check_open()
        keys, width = packed
        written = asyncio.get_running_loop().create_future()
        self._slices.setdefault((fingerprint, width), []).append(
            _Slices(keys, answers.raw, answers.starts, lengths, written))
        if self._slice_writer is None or self._slice_writer.done():
            self._slice_writer = asyncio.create_task(self._write_slices())
        await written

    async def _write_slices(self) -> None:
        """Write the waiting batches of answers, a statement per model, until none waits."""
        while self._slices:
            groups, self._slices = self._slices, {}
            for (fingerprint, width), parts in groups.items():
                bases = np.cumsum([0, *(len(p.raw) for p in parts[:-1])])
                values = np.concatenate([(p.starts + base) * _SLICE_LENGTH_LIMIT + p.lengths
                                         for p, base in zip(parts, bases.tolist(), strict=True)])
                args = (b"".join(p.keys for p in parts), b"".join(p.raw for p in parts),
                        json.dumps(values.tolist()))

                def insert(c: sqlite3.Connection, fingerprint=fingerprint, width=width,
                           args=args) -> None:
                    model = self._model_id(c, fingerprint, create=True)
                    # One statement in autocommit mode: a transaction of its own.
                    c.execute(_SLICED_INSERT.format(model=model, width=width), args)

                try:
                    await self._write(insert)
                except Exception as exc:  # noqa: BLE001 - its writers get it
                    _settle(parts, exc)
                except BaseException:  # cancelled: no writer may wait for ever
                    for waiting in [*groups.values(), *self._slices.values()]:
                        _settle(waiting, StoreUnavailableError(
                            f"store {self.address}: answer write interrupted"))
                    self._slices = {}
                    raise
                else:
                    _settle(parts, None)

    async def count_answers(self, fingerprint: str) -> int:
        def count(c: sqlite3.Connection) -> int:
            model = self._model_id(c, fingerprint, create=False)
            return 0 if model is None else c.execute(
                "SELECT COUNT(*) FROM answers WHERE model=?", (model,)).fetchone()[0]

        return await self._run(count)

    async def has_answers(self, fingerprint: str) -> bool:
        def exists(c: sqlite3.Connection) -> bool:
            model = self._model_id(c, fingerprint, create=False)
            return model is not None and c.execute(
                "SELECT 1 FROM answers WHERE model=? LIMIT 1", (model,)).fetchone() is not None

        return await self._run(exists)


@dataclass
class _Slices:
    """A batch of answers waiting for a grouped write (``put_answer_slices``)."""

    keys: bytes  # packed request keys
    raw: bytes
    starts: np.ndarray
    lengths: np.ndarray
    written: asyncio.Future


def _settle(parts: list[_Slices], error: BaseException | None) -> None:
    """Tell the writers of ``parts`` how their write ended."""
    for part in parts:
        if not part.written.done():
            if error is None:
                part.written.set_result(None)
            else:
                part.written.set_exception(error)


#: Request keys per look-up statement (SQLite allows 32,766 parameters).
_LOOKUP_CHUNK = 8192
#: ``put_answer_slices`` packs each answer's offset and length in one integer, the length
#: below this bound (longer answers take the row-by-row path).
_SLICE_LENGTH_LIMIT = 1 << 24
#: Row ``key`` of the JSON array ``?3`` (offset * limit + length, per answer) is the answer
#: ``substr(?2, offset + 1, length)`` to the request whose key is the ``key``-th ``width``
#: bytes of ``?1``.
_SLICED_INSERT = (
    "INSERT OR IGNORE INTO answers SELECT {model}, substr(?1, key * {width} + 1, {width}), "
    f"substr(?2, value / {_SLICE_LENGTH_LIMIT} + 1, value % {_SLICE_LENGTH_LIMIT}) "
    "FROM json_each(?3)")


def request_key(request_id: str) -> bytes:
    """A request id as its key in the answers table.

    Content ids (64 lowercase hex digits of sha256, and ``#n`` for the repeats of a sampled
    request) become a tag byte and their 32 bytes (then the suffix); any other id a tag byte
    and its UTF-8. Half the key's size makes the table's pages hold twice the rows: a file
    store writes answers about 1.7 times faster.
    """
    head = request_id[:64]
    if len(head) == 64 and not head.strip(_HEX_DIGITS):
        if len(request_id) == 64:
            return b"\x01" + bytes.fromhex(head)
        return b"\x01" + bytes.fromhex(head) + request_id[64:].encode()
    return b"\x00" + request_id.encode()


_HEX_DIGITS = "0123456789abcdef"


def packed_request_keys(request_ids: list[str]) -> tuple[bytes, int] | None:
    """The ``request_key`` of every id, concatenated, and their common width; None when the
    keys differ in width. Plain content ids (the usual case) are converted in one call."""
    if not request_ids:
        return None
    if set(map(len, request_ids)) == {64}:
        joined = "".join(request_ids)
        with contextlib.suppress(ValueError):
            digests = bytes.fromhex(joined)
            if digests.hex() == joined:  # lowercase hex digits only: content ids, all of them
                keys = np.empty((len(request_ids), 33), dtype=np.uint8)
                keys[:, 0] = 1
                keys[:, 1:] = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 32)
                return keys.tobytes(), 33
    keys = [request_key(rid) for rid in request_ids]
    widths = set(map(len, keys))
    return (b"".join(keys), widths.pop()) if len(widths) == 1 else None


def _compact_answer_keys(c: sqlite3.Connection) -> None:
    """Migration 3: answers keyed by (model number, compact request key), with the models'
    fingerprints in their own table, instead of by two hex strings (about 150 bytes a row)."""
    c.execute("CREATE TABLE models (id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE)")
    c.execute("ALTER TABLE answers RENAME TO answers_v2")
    c.execute("""CREATE TABLE answers (
        model INTEGER NOT NULL, request BLOB NOT NULL, answer BLOB NOT NULL,
        PRIMARY KEY (model, request)) WITHOUT ROWID""")
    c.execute("INSERT INTO models (fingerprint) SELECT DISTINCT fingerprint FROM answers_v2")
    models = dict(c.execute("SELECT fingerprint, id FROM models"))
    rows = c.execute("SELECT fingerprint, request_id, answer FROM answers_v2")
    while batch := rows.fetchmany(10_000):
        c.executemany("INSERT INTO answers VALUES (?,?,?)",
                      [(models[fp], request_key(rid), blob) for fp, rid, blob in batch])
    c.execute("DROP TABLE answers_v2")


#: SQLite's errors for a store it cannot write (answered UNAVAILABLE, never INTERNAL).
_UNWRITABLE = ("readonly database", "disk I/O error", "database or disk is full",
               "unable to open database file")


def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` in a ``BEGIN IMMEDIATE`` transaction (the write lock taken up front)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _job_values(job: JobRecord) -> tuple:
    return tuple(getattr(job, c) for c in JOB_COLUMNS)


def _check_owner(owner: str) -> None:
    if not owner:
        raise ValueError("owner must be a non-empty coordinator id")
