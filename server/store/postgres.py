"""``PostgresJobStore``: a PostgreSQL database shared by any number of coordinators.

psycopg 3 (async, ``psycopg[binary]`` bundles libpq) with a ``psycopg_pool`` connection pool.
Chosen over asyncpg because the URL goes to libpq unchanged (every ``psql`` option works: unix
sockets via ``host=``, ``sslmode``, ``.pgpass``, several hosts with ``target_session_attrs``),
it works behind PgBouncer's transaction pooling without turning off a statement cache, and its
array and COPY support cover the bulk paths; one answer batch is one statement either way, so
asyncpg's lower per-call overhead would not show.

- Tables live in the schema ``evalfleet`` (created on first connect, so a shared database's own
  ``jobs`` table is never touched); ``evalfleet.schema_version`` records the migrations applied,
  which run once, in order, in one transaction under an advisory lock (coordinators starting
  together do not race). A user without CREATE on the database can use a schema made for it.
- Compare-and-set is one ``UPDATE ... WHERE owner = ... AND state = ANY(...) RETURNING``;
  ``claim_next`` picks rows with ``FOR UPDATE SKIP LOCKED``; lease times use the server's clock
  (``statement_timestamp()``) unless the caller passes ``now``, so coordinators on hosts whose
  clocks differ agree on expiry.
- Answers are written with one ``INSERT ... SELECT FROM unnest(ids, blobs) ON CONFLICT DO
  NOTHING`` per batch, rows sorted by request id (two coordinators inserting overlapping
  batches lock keys in the same order, so they cannot deadlock), and read with ``request_id =
  ANY(ids)``; the arrays travel in binary (``%b``: 3x faster reads than text arrays) and the
  key columns use the "C" collation (plain byte order, whatever the database's locale);
  samples with ``COPY``.
- The pool is bound to the event loop that first uses the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from evalfleet.server.store.base import (
    ACTIVE_STATES,
    CANCELLED,
    JOB_COLUMNS,
    TERMINAL_STATES,
    JobRecord,
    StoreUnavailableError,
    job_from_row,
)
from evalfleet.server.store.postgres_answers import PostgresAnswers
from evalfleet.server.store.postgres_batches import PostgresBatches
from evalfleet.server.store.postgres_schema import SCHEMA, SCHEMA_VERSION, migrate

__all__ = ["SCHEMA", "SCHEMA_VERSION", "PostgresJobStore"]

_COLS = ", ".join(JOB_COLUMNS)
_JCOLS = ", ".join(f"j.{c}" for c in JOB_COLUMNS)
_ACTIVE = "ARRAY[" + ",".join(str(s) for s in ACTIVE_STATES) + "]"
#: The lease clock: the caller's ``now`` or the server's.
_NOW = "COALESCE(%(now)s::float8, extract(epoch from statement_timestamp()))"
_SERVER_NOW = "extract(epoch from statement_timestamp())"


class PostgresJobStore(PostgresAnswers, PostgresBatches):
    """PostgreSQL-backed ``JobStore`` at ``url`` (``postgresql://...`` or ``postgres://...``)."""

    def __init__(self, url: str, *, min_connections: int = 1, max_connections: int = 8,
                 connect_timeout_s: float = 15.0) -> None:
        from evalfleet.server.store import redact_url

        self.url = url
        self.address = redact_url(url)
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self._pool: Any = None
        self._lock: asyncio.Lock | None = None
        self._closed = False

    # -- plumbing ------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        if self._closed:
            raise StoreUnavailableError(f"store {self.address} is closed")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._pool is not None:
                return
            import psycopg
            from psycopg_pool import AsyncConnectionPool

            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=int(self.connect_timeout_s),
                    application_name="evalfleet")
            except psycopg.Error as exc:
                raise StoreUnavailableError(
                    f"store {self.address}: cannot connect ({_first_line(exc)})") from exc
            try:
                await self._migrate(conn)
            finally:
                await conn.close()
            pool = AsyncConnectionPool(
                self.url, min_size=self.min_connections, max_size=self.max_connections,
                kwargs={"autocommit": True, "application_name": "evalfleet"}, open=False,
                timeout=self.connect_timeout_s, name="evalfleet-store")
            try:
                await pool.open(wait=True, timeout=self.connect_timeout_s)
            except Exception as exc:
                await pool.close()
                raise StoreUnavailableError(
                    f"store {self.address}: connection pool did not open ({exc})") from exc
            self._pool = pool

    async def _migrate(self, conn: Any) -> None:
        await migrate(conn, self.address)

    async def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        import psycopg

        await self.open()
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"store {self.address}: {_first_line(exc)}") from exc

    async def _fetchall(self, query: str, params: Any = None, *, binary: bool = False
                        ) -> list[tuple]:
        async with self._connection() as conn:
            cur = conn.cursor(binary=binary)
            await cur.execute(query, params)
            return await cur.fetchall()

    async def _fetchone(self, query: str, params: Any = None) -> tuple | None:
        async with self._connection() as conn:
            return await (await conn.execute(query, params)).fetchone()

    async def _rowcount(self, query: str, params: Any = None) -> int:
        async with self._connection() as conn:
            return (await conn.execute(query, params)).rowcount

    # -- jobs ------------------------------------------------------------------------------------

    async def create_job(self, job: JobRecord) -> bool:
        marks = ", ".join(["%s"] * len(JOB_COLUMNS))
        return await self._rowcount(
            f"INSERT INTO {SCHEMA}.jobs ({_COLS}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING",
            _job_values(job)) == 1

    async def put_job(self, job: JobRecord) -> None:
        marks = ", ".join(["%s"] * len(JOB_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in JOB_COLUMNS[1:])
        await self._rowcount(
            f"INSERT INTO {SCHEMA}.jobs ({_COLS}) VALUES ({marks}) "
            f"ON CONFLICT (id) DO UPDATE SET {updates}", _job_values(job))

    async def get_job(self, job_id: str) -> JobRecord | None:
        row = await self._fetchone(f"SELECT {_COLS} FROM {SCHEMA}.jobs WHERE id = %s",
                                   (job_id,))
        return job_from_row(row) if row else None

    async def list_jobs(self, limit: int = 0, states: Iterable[int] | None = None
                        ) -> list[JobRecord]:
        query = f"SELECT {_COLS} FROM {SCHEMA}.jobs"
        params: dict[str, Any] = {}
        if states is not None:
            query += " WHERE state = ANY(%(states)s::int[])"
            params["states"] = [int(s) for s in states]
        query += " ORDER BY created_at DESC, id"
        if limit > 0:
            query += " LIMIT %(limit)s"
            params["limit"] = int(limit)
        return [job_from_row(r) for r in await self._fetchall(query, params)]

    # -- leases and compare-and-set ----------------------------------------------------------

    async def claim_job(self, job_id: str, owner: str, lease_s: float, *,
                        now: float | None = None) -> JobRecord | None:
        _check_owner(owner)
        row = await self._fetchone(
            f"UPDATE {SCHEMA}.jobs SET owner = %(owner)s, lease_until = {_NOW} + %(lease)s, "
            f"attempts = attempts + (CASE WHEN owner = %(owner)s THEN 0 ELSE 1 END) "
            f"WHERE id = %(id)s AND state = ANY({_ACTIVE}) "
            f"AND (owner = '' OR owner = %(owner)s OR lease_until <= {_NOW}) RETURNING {_COLS}",
            {"owner": owner, "lease": float(lease_s), "id": job_id, "now": now})
        return job_from_row(row) if row else None

    async def claim_next(self, owner: str, lease_s: float, limit: int = 1, *,
                         now: float | None = None) -> list[JobRecord]:
        _check_owner(owner)
        rows = await self._fetchall(
            f"UPDATE {SCHEMA}.jobs j SET owner = %(owner)s, lease_until = {_NOW} + %(lease)s, "
            f"attempts = j.attempts + (CASE WHEN j.owner = %(owner)s THEN 0 ELSE 1 END) "
            f"FROM (SELECT id FROM {SCHEMA}.jobs WHERE state = ANY({_ACTIVE}) "
            f"AND (owner = '' OR lease_until <= {_NOW}) ORDER BY created_at, id "
            f"LIMIT %(limit)s FOR UPDATE SKIP LOCKED) picked "
            f"WHERE j.id = picked.id RETURNING {_JCOLS}",
            {"owner": owner, "lease": float(lease_s), "limit": int(limit), "now": now})
        return sorted((job_from_row(r) for r in rows), key=lambda j: (j.created_at, j.id))

    async def list_claimable(self, now: float | None = None, limit: int = 0
                             ) -> list[JobRecord]:
        query = (f"SELECT {_COLS} FROM {SCHEMA}.jobs WHERE state = ANY({_ACTIVE}) "
                 f"AND (owner = '' OR lease_until <= {_NOW}) ORDER BY created_at, id")
        params: dict[str, Any] = {"now": now}
        if limit > 0:
            query += " LIMIT %(limit)s"
            params["limit"] = int(limit)
        return [job_from_row(r) for r in await self._fetchall(query, params)]

    async def renew_lease(self, job_id: str, owner: str, lease_s: float, *,
                          now: float | None = None, progress: bytes | None = None) -> bool:
        _check_owner(owner)
        return await self._rowcount(
            f"UPDATE {SCHEMA}.jobs SET lease_until = {_NOW} + %(lease)s, "
            f"progress = COALESCE(%(progress)s::bytea, progress) WHERE id = %(id)s "
            f"AND owner = %(owner)s AND state = ANY({_ACTIVE})",
            {"lease": float(lease_s), "id": job_id, "owner": owner, "now": now,
             "progress": progress}) == 1

    async def release(self, job_id: str, owner: str) -> bool:
        _check_owner(owner)
        return await self._rowcount(
            f"UPDATE {SCHEMA}.jobs SET owner = '', lease_until = 0 WHERE id = %s "
            f"AND owner = %s AND state = ANY({_ACTIVE})", (job_id, owner)) == 1

    async def transition(self, job_id: str, owner: str, from_states: Iterable[int],
                         to_state: int, *, error: str = "", results: bytes | None = None,
                         results_json: str | None = None, progress: bytes | None = None
                         ) -> JobRecord | None:
        _check_owner(owner)
        row = await self._fetchone(
            f"UPDATE {SCHEMA}.jobs SET state = %(to)s, error = %(error)s, "
            f"updated_at = {_SERVER_NOW}, results = COALESCE(%(results)s::bytea, results), "
            f"results_json = COALESCE(%(results_json)s::text, results_json), "
            f"progress = COALESCE(%(progress)s::bytea, progress), "
            f"lease_until = (CASE WHEN %(ends)s THEN 0 ELSE lease_until END) "
            f"WHERE id = %(id)s AND owner = %(owner)s AND state = ANY(%(froms)s::int[]) "
            f"RETURNING {_COLS}",
            {"to": int(to_state), "error": error, "results": results,
             "results_json": results_json, "progress": progress,
             "ends": to_state in TERMINAL_STATES, "id": job_id,
             "owner": owner, "froms": [int(s) for s in from_states]})
        return job_from_row(row) if row else None

    async def cancel_job(self, job_id: str, error: str) -> JobRecord | None:
        row = await self._fetchone(
            f"UPDATE {SCHEMA}.jobs SET state = %s, error = %s, updated_at = {_SERVER_NOW}, "
            f"lease_until = 0 WHERE id = %s AND state = ANY({_ACTIVE}) RETURNING {_COLS}",
            (int(CANCELLED), error, job_id))
        return job_from_row(row) if row else None

    async def put_results(self, job_id: str, owner: str, results: bytes,
                          results_json: str) -> bool:
        _check_owner(owner)
        return await self._rowcount(
            f"UPDATE {SCHEMA}.jobs SET results = %s, results_json = %s, "
            f"updated_at = {_SERVER_NOW} WHERE id = %s AND owner = %s "
            f"AND state = ANY({_ACTIVE})", (results, results_json, job_id, owner)) == 1

    # -- samples ---------------------------------------------------------------------------------

    async def put_samples(self, job_id: str, owner: str,
                          records: Iterable[tuple[str, str]]) -> bool:
        _check_owner(owner)
        rows = [(job_id, i, task, rec) for i, (task, rec) in enumerate(records)]
        async with self._connection() as conn, conn.transaction():
            held = await (await conn.execute(
                f"SELECT 1 FROM {SCHEMA}.jobs WHERE id = %s AND owner = %s "
                f"AND state = ANY({_ACTIVE}) FOR UPDATE", (job_id, owner))).fetchone()
            if held is None:
                return False
            await conn.execute(f"DELETE FROM {SCHEMA}.samples WHERE job_id = %s", (job_id,))
            cur = conn.cursor()
            async with cur.copy(f"COPY {SCHEMA}.samples (job_id, seq, task, record) "
                                f"FROM STDIN") as copy:
                for row in rows:
                    await copy.write_row(row)
            return True

    async def _samples_page(self, job_id: str, after_seq: int, limit: int,
                            tasks: Sequence[str]) -> list[tuple[int, str, str]]:
        query = (f"SELECT seq, task, record FROM {SCHEMA}.samples WHERE job_id = %(id)s "
                 f"AND seq > %(after)s")
        params: dict[str, Any] = {"id": job_id, "after": after_seq, "limit": limit}
        if tasks:
            query += " AND task = ANY(%(tasks)s::text[])"
            params["tasks"] = list(tasks)
        return await self._fetchall(query + " ORDER BY seq LIMIT %(limit)s", params)


def _job_values(job: JobRecord) -> tuple:
    return tuple(getattr(job, c) for c in JOB_COLUMNS)


def _check_owner(owner: str) -> None:
    if not owner:
        raise ValueError("owner must be a non-empty coordinator id")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
