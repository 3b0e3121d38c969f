"""The SQLite store's schema: its migrations, and the transaction every write step runs in."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from evalfleet.server.store.migrations import pending_migrations
from evalfleet.server.store.sqlite_keys import request_key

T = TypeVar("T")

# Migration 1 is the layout of evalfleet's first store (files written before leases existed
# open unchanged); 2 adds lease ownership; 3 gives answers compact keys (see
# compact_answer_keys); 4 keeps each job's progress (NULL for the jobs already stored); 5 adds
# the provider-batch records (batch_records.py). Each runs once, in order, in one transaction.
MIGRATIONS: list[tuple[int, list[str | Callable[[sqlite3.Connection], None]]]] = [
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
    (3, [lambda c: compact_answer_keys(c)]),
    (4, ["ALTER TABLE jobs ADD COLUMN progress BLOB"]),
    (5, ["""CREATE TABLE IF NOT EXISTS provider_batches (
            job_id TEXT NOT NULL, chunk TEXT NOT NULL, kind TEXT NOT NULL,
            request_ids TEXT NOT NULL, tag TEXT NOT NULL, batch_id TEXT NOT NULL,
            state TEXT NOT NULL, attempt INTEGER NOT NULL, created_at REAL NOT NULL,
            updated_at REAL NOT NULL, PRIMARY KEY (job_id, chunk))"""]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection, address: str) -> None:
    """Run the migrations ``conn``'s file has not had, in one transaction."""
    def step(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE IF NOT EXISTS schema_version "
                  "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
        current = c.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        for version, statements in pending_migrations(MIGRATIONS, current, address):
            for statement in statements:
                if callable(statement):
                    statement(c)
                else:
                    c.execute(statement)
            c.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))

    transaction(conn, step)


def compact_answer_keys(c: sqlite3.Connection) -> None:
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


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` in a ``BEGIN IMMEDIATE`` transaction (the write lock taken up front)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result

