"""The PostgreSQL store's schema ``evalfleet``: its migrations, run under an advisory lock."""

from __future__ import annotations

from typing import Any

from evalfleet.server.store.base import ACTIVE_STATES
from evalfleet.server.store.migrations import pending_migrations

SCHEMA = "evalfleet"
#: Key for ``pg_advisory_xact_lock`` while migrating ("evalfleet" in ASCII, as a bigint).
_MIGRATION_LOCK = 0x6576616C666C6565

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        f"""CREATE TABLE {SCHEMA}.jobs (
            id text PRIMARY KEY, spec bytea NOT NULL, state integer NOT NULL,
            error text NOT NULL DEFAULT '', created_at double precision NOT NULL,
            updated_at double precision NOT NULL, results_json text, results bytea,
            owner text NOT NULL DEFAULT '', lease_until double precision NOT NULL DEFAULT 0,
            attempts integer NOT NULL DEFAULT 0)""",
        f"CREATE INDEX jobs_by_created ON {SCHEMA}.jobs (created_at)",
        f"CREATE INDEX jobs_active ON {SCHEMA}.jobs (created_at) "
        f"WHERE state IN ({','.join(str(s) for s in ACTIVE_STATES)})",
        f"""CREATE TABLE {SCHEMA}.answers (
            fingerprint text COLLATE "C" NOT NULL, request_id text COLLATE "C" NOT NULL,
            answer bytea NOT NULL,
            PRIMARY KEY (fingerprint, request_id))""",
        f"""CREATE TABLE {SCHEMA}.samples (
            job_id text NOT NULL REFERENCES {SCHEMA}.jobs (id) ON DELETE CASCADE,
            seq integer NOT NULL, task text NOT NULL, record text NOT NULL,
            PRIMARY KEY (job_id, seq))""",
    ]),
    # Each job's progress (NULL for the jobs already stored).
    (2, [f"ALTER TABLE {SCHEMA}.jobs ADD COLUMN progress bytea"]),
    # The provider-batch records (batch_records.py).
    (3, [f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.provider_batches (
            job_id text NOT NULL, chunk text NOT NULL, kind text NOT NULL,
            request_ids text NOT NULL, tag text NOT NULL, batch_id text NOT NULL,
            state text NOT NULL, attempt integer NOT NULL, created_at double precision NOT NULL,
            updated_at double precision NOT NULL, PRIMARY KEY (job_id, chunk))"""]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


async def migrate(conn: Any, address: str) -> None:
    """Create the schema and run the migrations it has not had, in one transaction under an
    advisory lock (coordinators starting together do not race)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        exists = await (await conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,))).fetchone()
        if not exists:
            await conn.execute(f"CREATE SCHEMA {SCHEMA}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version (version integer PRIMARY "
            f"KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        current = (await (await conn.execute(
            f"SELECT COALESCE(MAX(version), 0) FROM {SCHEMA}.schema_version")).fetchone())[0]
        for version, statements in pending_migrations(MIGRATIONS, current, address):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                f"INSERT INTO {SCHEMA}.schema_version (version) VALUES (%s)", (version,))
