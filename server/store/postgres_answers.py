"""The PostgreSQL store's answers, a mixin of ``PostgresJobStore`` (it uses the store's
``_connection``/``_fetchone``)."""

from __future__ import annotations

from collections.abc import Iterable

from evalfleet.server.store.base import JobStore
from evalfleet.server.store.postgres_schema import SCHEMA

#: Rows per answer statement (both arrays travel in one message).
_ANSWER_CHUNK = 20000


class PostgresAnswers(JobStore):
    """The answers methods of ``PostgresJobStore``."""

    async def get_answers(self, fingerprint: str, request_ids: Iterable[str]
                          ) -> dict[str, bytes]:
        ids = list(request_ids)
        found: dict[str, bytes] = {}
        if not ids:
            return found
        async with self._connection() as conn:
            cur = conn.cursor(binary=True)
            for start in range(0, len(ids), _ANSWER_CHUNK):
                await cur.execute(
                    f"SELECT request_id, answer FROM {SCHEMA}.answers WHERE fingerprint = %b "
                    f"AND request_id = ANY(%b::text[])",
                    (fingerprint, ids[start:start + _ANSWER_CHUNK]))
                found.update(await cur.fetchall())
        return found

    async def put_answers(self, fingerprint: str, answers: Iterable[tuple[str, bytes]]
                          ) -> int:
        # One row per id (the first given wins, as in the table), sorted so that concurrent
        # writers of overlapping batches take the keys' locks in the same order.
        unique: dict[str, bytes] = {}
        for rid, blob in answers:
            unique.setdefault(rid, blob)
        ids = sorted(unique)
        added = 0
        if not ids:
            return 0
        async with self._connection() as conn:
            for start in range(0, len(ids), _ANSWER_CHUNK):
                chunk = ids[start:start + _ANSWER_CHUNK]
                cur = await conn.execute(
                    f"INSERT INTO {SCHEMA}.answers (fingerprint, request_id, answer) "
                    f"SELECT %b, r, a FROM unnest(%b::text[], %b::bytea[]) AS t(r, a) "
                    f"ON CONFLICT DO NOTHING",
                    (fingerprint, chunk, [unique[i] for i in chunk]))
                added += cur.rowcount
        return added

    async def count_answers(self, fingerprint: str) -> int:
        row = await self._fetchone(
            f"SELECT COUNT(*) FROM {SCHEMA}.answers WHERE fingerprint = %s", (fingerprint,))
        return int(row[0])

    async def has_answers(self, fingerprint: str) -> bool:
        row = await self._fetchone(
            f"SELECT 1 FROM {SCHEMA}.answers WHERE fingerprint = %s LIMIT 1", (fingerprint,))
        return row is not None

