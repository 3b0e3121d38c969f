"""The SQLite store's provider-batch records (``ProviderBatchStore``), a mixin of
``SqliteJobStore`` (it uses the store's ``_run``/``_write``)."""

from __future__ import annotations

import sqlite3
import time

from evalfleet.server.store.base import JobStore
from evalfleet.server.store.batch_records import (
    BATCH_COLUMNS,
    ProviderBatchRecord,
    batch_from_row,
    batch_values,
    check_batch_state,
)

_COLS = ", ".join(BATCH_COLUMNS)


class SqliteBatches(JobStore):
    """The provider-batch methods of ``SqliteJobStore``."""

    async def add_provider_batch(self, record: ProviderBatchRecord) -> bool:
        check_batch_state(record.state)
        now = time.time()
        values = list(batch_values(record))
        values[-2] = record.created_at or now
        values[-1] = record.updated_at or now
        return await self._write(lambda c: c.execute(
            f"INSERT OR IGNORE INTO provider_batches ({_COLS}) VALUES "
            f"({','.join('?' * len(BATCH_COLUMNS))})", values).rowcount == 1)

    async def update_provider_batch(self, job_id: str, chunk: str, *,
                                    batch_id: str | None = None,
                                    state: str | None = None) -> bool:
        check_batch_state(state)

        def update(c: sqlite3.Connection) -> bool:
            return c.execute(
                "UPDATE provider_batches SET batch_id=COALESCE(?, batch_id), "
                "state=COALESCE(?, state), updated_at=? WHERE job_id=? AND chunk=?",
                (batch_id, state, time.time(), job_id, chunk)).rowcount == 1

        return await self._write(update)

    async def list_provider_batches(self, job_id: str) -> list[ProviderBatchRecord]:
        rows = await self._run(lambda c: c.execute(
            f"SELECT {_COLS} FROM provider_batches WHERE job_id=? ORDER BY created_at, chunk",
            (job_id,)).fetchall())
        return [batch_from_row(r) for r in rows]
