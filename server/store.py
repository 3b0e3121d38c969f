"""Durable job state and answers.

``JobStore`` is the seam: the coordinator only talks to this interface. ``SqliteJobStore`` is the
default (one file, or ``:memory:`` for throw-away embedded runs); a server database can implement
the same interface later.

Answers are stored under (model fingerprint, request id): a request id is derived from the
request's content, so an answer computed once is reused by every later job on the same model,
and a job interrupted half-way resumes where it stopped.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class JobRecord:
    """One evaluation job as stored."""

    id: str
    spec: bytes  # serialized evalfleet.v1.EvaluationSpec
    state: int  # evalfleet.v1.EvaluationState
    error: str
    created_at: float
    updated_at: float
    results_json: str | None = None
    results: bytes | None = None  # serialized evalfleet.v1.EvaluationResults


class JobStore(ABC):
    """Where jobs, their results and every computed answer live."""

    @abstractmethod
    def put_job(self, job: JobRecord) -> None: ...

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list_jobs(self, limit: int = 0) -> list[JobRecord]: ...

    @abstractmethod
    def update_state(self, job_id: str, state: int, error: str = "") -> None: ...

    @abstractmethod
    def put_results(self, job_id: str, results: bytes, results_json: str) -> None: ...

    @abstractmethod
    def put_samples(self, job_id: str, records: Iterable[tuple[str, str]]) -> None: ...

    @abstractmethod
    def iter_samples(self, job_id: str) -> Iterator[tuple[str, str]]: ...

    @abstractmethod
    def get_answers(self, fingerprint: str, request_ids: Iterable[str]) -> dict[str, bytes]: ...

    @abstractmethod
    def put_answers(self, fingerprint: str, answers: Iterable[tuple[str, bytes]]) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, spec BLOB NOT NULL, state INTEGER NOT NULL, error TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, results BLOB, results_json TEXT
);
CREATE TABLE IF NOT EXISTS answers (
    fingerprint TEXT NOT NULL, request_id TEXT NOT NULL, answer BLOB NOT NULL,
    PRIMARY KEY (fingerprint, request_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, task TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""


class SqliteJobStore(JobStore):
    """SQLite-backed store (WAL mode), safe to use from several threads."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    def put_job(self, job: JobRecord) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?,?,?,?,?,?,?,?)",
                (job.id, job.spec, job.state, job.error, job.created_at, job.updated_at,
                 job.results, job.results_json),
            )

    def _row_to_job(self, row: tuple) -> JobRecord:
        return JobRecord(id=row[0], spec=row[1], state=row[2], error=row[3], created_at=row[4],
                         updated_at=row[5], results=row[6], results_json=row[7])

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._row_to_job(row) if row else None

    def list_jobs(self, limit: int = 0) -> list[JobRecord]:
        query = "SELECT * FROM jobs ORDER BY created_at DESC"
        with self._lock:
            rows = self._conn.execute(query + (f" LIMIT {int(limit)}" if limit > 0 else ""))
            return [self._row_to_job(r) for r in rows.fetchall()]

    def update_state(self, job_id: str, state: int, error: str = "") -> None:
        with self._lock:
            self._conn.execute("UPDATE jobs SET state=?, error=?, updated_at=? WHERE id=?",
                               (state, error, time.time(), job_id))

    def put_results(self, job_id: str, results: bytes, results_json: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE jobs SET results=?, results_json=?, updated_at=? WHERE id=?",
                               (results, results_json, time.time(), job_id))

    def put_samples(self, job_id: str, records: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.execute("DELETE FROM samples WHERE job_id=?", (job_id,))
            self._conn.executemany(
                "INSERT INTO samples VALUES (?,?,?,?)",
                ((job_id, i, task, rec) for i, (task, rec) in enumerate(records)),
            )
            self._conn.execute("COMMIT")

    def iter_samples(self, job_id: str) -> Iterator[tuple[str, str]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT task, record FROM samples WHERE job_id=? ORDER BY seq", (job_id,)
            ).fetchall()
        yield from rows

    def get_answers(self, fingerprint: str, request_ids: Iterable[str]) -> dict[str, bytes]:
        ids = list(request_ids)
        found: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT request_id, answer FROM answers WHERE fingerprint=? "
                    f"AND request_id IN ({marks})", (fingerprint, *chunk))
                found.update(rows.fetchall())
        return found

    def put_answers(self, fingerprint: str, answers: Iterable[tuple[str, bytes]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT OR REPLACE INTO answers VALUES (?,?,?)",
                ((fingerprint, rid, blob) for rid, blob in answers),
            )
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
