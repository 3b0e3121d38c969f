"""The PostgreSQL store's provider-batch records (``ProviderBatchStore``), a mixin of
``PostgresJobStore`` (it uses the store's ``_rowcount``/``_fetchall``)."""

from __future__ import annotations

from evalfleet.server.store.base import JobStore
from evalfleet.server.store.batch_records import (
    BATCH_COLUMNS,
    ProviderBatchRecord,
    batch_from_row,
    batch_values,
    check_batch_state,
)
from evalfleet.server.store.postgres_schema import SCHEMA

_COLS = ", ".join(BATCH_COLUMNS)
_NOW = "extract(epoch from statement_timestamp())"


class PostgresBatches(JobStore):
    """The provider-batch methods of ``PostgresJobStore``."""

    async def add_provider_batch(self, record: ProviderBatchRecord) -> bool:
        check_batch_state(record.state)
        values = list(batch_values(record))
        marks = ", ".join(["%s"] * (len(BATCH_COLUMNS) - 2))
        return await self._rowcount(
            f"INSERT INTO {SCHEMA}.provider_batches ({_COLS}) VALUES ({marks}, "
            f"COALESCE(NULLIF(%s::float8, 0), {_NOW}), COALESCE(NULLIF(%s::float8, 0), {_NOW})) "
            f"ON CONFLICT (job_id, chunk) DO NOTHING", values) == 1

    async def update_provider_batch(self, job_id: str, chunk: str, *,
                                    batch_id: str | None = None,
                                    state: str | None = None) -> bool:
        check_batch_state(state)
        return await self._rowcount(
            f"UPDATE {SCHEMA}.provider_batches SET batch_id = COALESCE(%s::text, batch_id), "
            f"state = COALESCE(%s::text, state), updated_at = {_NOW} "
            f"WHERE job_id = %s AND chunk = %s", (batch_id, state, job_id, chunk)) == 1

    async def list_provider_batches(self, job_id: str) -> list[ProviderBatchRecord]:
        rows = await self._fetchall(
            f"SELECT {_COLS} FROM {SCHEMA}.provider_batches WHERE job_id = %s "
            f"ORDER BY created_at, chunk", (job_id,))
        return [batch_from_row(r) for r in rows]
