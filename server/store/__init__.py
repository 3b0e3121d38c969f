"""Durable job state, results, samples and answers: the coordinator's only persistent state.

``JobStore`` (``base.py``) is the seam; ``SqliteJobStore`` (``sqlite.py``: one file, WAL, the
default, or ``:memory:``) and ``PostgresJobStore`` (``postgres.py``: several coordinators on one
database) implement it, and ``tests/test_store_contract.py`` runs one suite against both.
``open_store(url)`` picks one from ``--store``.

The model:

- **Every method is async** and never blocks the event loop (SQLite runs on a thread of its own,
  PostgreSQL uses psycopg's async connections). A store opens on first use; ``await
  store.open()`` opens it early so a bad path or URL is reported at start-up.
- **Jobs are owned under leases.** A coordinator (``owner``: a unique id) holds a QUEUED or
  RUNNING job while its lease is live: ``create_job`` with ``owner``/``lease_until`` set, or
  ``claim_job`` / ``claim_next`` (a job held by nobody, or whose lease expired, or already the
  caller's). The holder calls ``renew_lease`` well within the lease (every ``lease_s / 3``) and
  stops working on the job the moment it returns False; ``release`` hands a job back at once
  (graceful shutdown). ``list_claimable`` shows what a restarted or second coordinator may take
  over (jobs whose coordinator died); ``claim_next`` takes them so that concurrent callers never
  get the same job (``BEGIN IMMEDIATE`` in SQLite, ``FOR UPDATE SKIP LOCKED`` in PostgreSQL).
- **State changes are compare-and-set.** ``transition(job_id, owner, from_states, to_state)``
  applies only while ``owner`` holds the job and its state is one of ``from_states``; otherwise
  it returns None and writes nothing. A lease that expired but that nobody claimed is still its
  holder's (a claim is what changes the owner, and every job write checks the owner), so a
  coordinator that was paused past its lease either finds its job intact or is refused; two
  coordinators never both finish a job. ``attempts`` counts claims by a new owner.
- **Results before the end.** ``put_results`` (owner-checked) stores the typed results and
  lm-eval's JSON while the job is still RUNNING, or ``transition(..., results=...)`` writes them
  in the same transaction as SUCCEEDED: a SUCCEEDED job always has its results.
- **Answers are their own table**, keyed by (model fingerprint, request id) and shared by every
  job: a request id is the sha256 of the request's content, so an answer computed once serves
  every later or concurrent job on the same model, and a job interrupted half-way resumes with
  only the missing answers. The first answer stored wins (``INSERT OR IGNORE`` / ``ON CONFLICT
  DO NOTHING``); answers need no lease, since equal keys mean equal requests.
- **Samples** (lm-eval's per-document records, ``--log_samples``) are replaced whole by the
  job's owner and read back a page at a time (``iter_samples``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.redact import redact_url
from evalfleet.server.store.base import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    AnswerSlices,
    JobRecord,
    JobStore,
    StoreSchemaError,
    StoreUnavailableError,
    StoreUnwritableError,
)
from evalfleet.server.store.sqlite import SqliteJobStore

if TYPE_CHECKING:
    from evalfleet.server.store.postgres import PostgresJobStore

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "AnswerSlices",
    "JobRecord",
    "JobStore",
    "PostgresJobStore",
    "SqliteJobStore",
    "StoreSchemaError",
    "StoreUnavailableError",
    "StoreUnwritableError",
    "open_store",
    "redact_url",
]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
STORE_FORMS = ("a SQLite file path, sqlite:///PATH, :memory: (nothing kept), or "
               "postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME")


def open_store(url: str, *, flag: str = "--store") -> JobStore:
    """The store ``url`` names (not yet connected: ``await store.open()``).

    ``:memory:``, a file path or ``sqlite:///PATH`` → SQLite; ``postgresql://...`` or
    ``postgres://...`` → PostgreSQL; anything else → ``InvalidArgumentError`` naming ``flag``.
    """
    text = (url or "").strip()
    if not text:
        raise InvalidArgumentError(f"{flag}: empty; give {STORE_FORMS}")
    scheme = _SCHEME.match(text)
    if scheme is None:
        return SqliteJobStore(text)
    name = scheme.group(1).lower()
    if name == "sqlite":
        path = text[len("sqlite:///"):] if text.lower().startswith("sqlite:///") else ""
        if not path:
            raise InvalidArgumentError(
                f"{flag}: '{text}' names no file; write sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db")
        return SqliteJobStore(path)
    if name in ("postgresql", "postgres"):
        from evalfleet.server.store.postgres import PostgresJobStore

        return PostgresJobStore(text)
    raise InvalidArgumentError(
        f"{flag}: '{redact_url(text)}' is not a store this evalfleet knows (scheme "
        f"'{name}'); give {STORE_FORMS}")


def __getattr__(name: str) -> Any:
    if name == "PostgresJobStore":  # imported on demand: psycopg is only needed for it
        from evalfleet.server.store.postgres import PostgresJobStore

        return PostgresJobStore
    raise AttributeError(name)
