"""The ``JobStore`` contract: what every store implementation guarantees.

See the package docstring (``evalfleet.server.store``) for the model: jobs owned under leases,
compare-and-set state transitions, content-keyed answers shared by all jobs, samples.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from evalfleet.common.errors import UnavailableError
from evalfleet.server.store.batch_records import ProviderBatchStore
from evalfleet.v1 import coordinator_pb2 as cpb

QUEUED = cpb.EVALUATION_STATE_QUEUED
RUNNING = cpb.EVALUATION_STATE_RUNNING
SUCCEEDED = cpb.EVALUATION_STATE_SUCCEEDED
FAILED = cpb.EVALUATION_STATE_FAILED
CANCELLED = cpb.EVALUATION_STATE_CANCELLED
#: States in which a job still has work to do: only these can be claimed or leased.
ACTIVE_STATES: tuple[int, ...] = (QUEUED, RUNNING)
TERMINAL_STATES: tuple[int, ...] = (SUCCEEDED, FAILED, CANCELLED)
#: Rows read per round trip by ``iter_samples``.
SAMPLES_PAGE = 2000


@dataclass
class JobRecord:
    """One evaluation job as stored.

    ``owner`` is the coordinator holding the job's lease (``""``: nobody) and ``lease_until``
    when that lease expires (epoch seconds, the store's clock); after a job ends, ``owner`` is
    kept as the coordinator that finished it. ``attempts`` counts the claims by a new owner.
    """

    id: str
    spec: bytes  # serialized evalfleet.v1.EvaluationSpec
    state: int  # evalfleet.v1.EvaluationState
    error: str
    created_at: float
    updated_at: float
    results_json: str | None = None
    results: bytes | None = None  # serialized evalfleet.v1.EvaluationResults
    owner: str = ""
    lease_until: float = 0.0
    attempts: int = 0
    #: The job's progress as its holder last renewed its lease or ended it (``encode_progress``);
    #: None for a job no coordinator has reported on (or stored before progress was kept).
    progress: bytes | None = None


#: Column order of ``JobRecord`` rows in every implementation's ``SELECT``.
JOB_COLUMNS = ("id", "spec", "state", "error", "created_at", "updated_at", "results_json",
               "results", "owner", "lease_until", "attempts", "progress")


def job_from_row(row: Sequence) -> JobRecord:
    """A ``JobRecord`` from a row selected in ``JOB_COLUMNS`` order."""
    return JobRecord(id=row[0], spec=bytes(row[1]), state=row[2], error=row[3],
                     created_at=row[4], updated_at=row[5], results_json=row[6],
                     results=bytes(row[7]) if row[7] is not None else None, owner=row[8],
                     lease_until=row[9], attempts=row[10],
                     progress=bytes(row[11]) if row[11] is not None else None)


def encode_progress(progress: Iterable[cpb.TaskProgress], unique_requests: int = 0,
                    task_usage: Iterable[cpb.TaskUsage] = (),
                    usage: cpb.TokenUsage | None = None) -> bytes:
    """A job's per-task progress and usage, its total usage and its distinct requests as
    stored in ``JobRecord.progress``: a serialized ``Evaluation`` holding only those fields
    (tens of bytes a task)."""
    return cpb.Evaluation(progress=progress, unique_requests=unique_requests,
                          task_usage=task_usage, usage=usage).SerializeToString()


def decode_progress(stored: bytes | None) -> cpb.Evaluation:
    """What ``encode_progress`` stored, as an ``Evaluation`` holding only ``progress``,
    ``unique_requests``, ``task_usage`` and ``usage``; empty for a record without progress (or
    with unreadable bytes). A record stored before usage was kept decodes with none (zero
    usage)."""
    evaluation = cpb.Evaluation()
    if stored:
        try:
            evaluation.ParseFromString(stored)
        except DecodeError:
            evaluation.Clear()
    return evaluation


@dataclass(frozen=True)
class AnswerSlices:
    """Answers that lie in one buffer, as a worker's response holds them: the answer to
    ``ids[i]`` is ``raw[starts[i]:ends[i]]``. A store may write them without making a bytes
    object per answer (``JobStore.put_answer_slices``)."""

    ids: list[str]
    raw: bytes
    starts: np.ndarray  # int64 offsets into raw
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def pairs(self) -> list[tuple[str, bytes]]:
        """``(request id, answer)`` pairs."""
        raw = self.raw
        return [(rid, raw[a:b]) for rid, a, b in zip(self.ids, self.starts.tolist(),
                                                     self.ends.tolist(), strict=True)]


class StoreUnavailableError(UnavailableError):
    """The store cannot be opened or reached; the message names it (never its password)."""


class StoreUnwritableError(StoreUnavailableError):
    """The store is there but cannot be written now (a read-only or immutable file, a full
    disk): what is computed is kept and written once it can be."""


class StoreSchemaError(StoreUnavailableError):
    """The store was written by a newer evalfleet (a schema version this one does not know)."""


class JobStore(ProviderBatchStore, ABC):
    """Where jobs, their results and samples, every computed answer, and the provider batches
    of ``batch_api`` jobs (``ProviderBatchStore``) live.

    Every method is a coroutine and never blocks the event loop. A store is opened on first use
    (``await store.open()`` opens it at once, to report a bad path or URL early) and closed with
    ``await store.close()``; ``async with store:`` does both.
    """

    #: The store's address for messages (passwords removed).
    address: str = ""

    async def __aenter__(self) -> JobStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema; idempotent. ``StoreUnavailableError``."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads; idempotent."""

    async def write_problem(self) -> str | None:
        """Why the store cannot be written now, or None (a cheap check: the coordinator's
        health asks it every few seconds)."""
        return None

    # -- jobs ------------------------------------------------------------------------------

    @abstractmethod
    async def create_job(self, job: JobRecord) -> bool:
        """Insert a new job (``job.owner``/``lease_until`` may claim it at once).

        False, and nothing written, when a job with that id already exists.
        """

    @abstractmethod
    async def put_job(self, job: JobRecord) -> None:
        """Insert or replace a job record unconditionally (imports and tests; the runner uses
        ``create_job`` and claims). Its samples are kept."""

    @abstractmethod
    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None."""

    @abstractmethod
    async def list_jobs(self, limit: int = 0, states: Iterable[int] | None = None
                        ) -> list[JobRecord]:
        """Jobs newest first (all when ``limit`` is 0), optionally only in ``states``."""

    # -- leases and compare-and-set ------------------------------------------------------

    @abstractmethod
    async def claim_job(self, job_id: str, owner: str, lease_s: float, *,
                        now: float | None = None) -> JobRecord | None:
        """Take the job's lease for ``lease_s`` seconds from ``now`` (default: the store's clock).

        Succeeds, atomically, only when the job is QUEUED or RUNNING and either nobody holds it,
        its lease has expired (``lease_until <= now``), or ``owner`` already holds it (then it
        is a renewal and ``attempts`` is unchanged). Returns the claimed record, else None.
        """

    @abstractmethod
    async def claim_next(self, owner: str, lease_s: float, limit: int = 1, *,
                         now: float | None = None) -> list[JobRecord]:
        """Claim up to ``limit`` claimable jobs (oldest first) in one atomic step; concurrent
        callers never get the same job."""

    @abstractmethod
    async def list_claimable(self, now: float | None = None, limit: int = 0
                             ) -> list[JobRecord]:
        """QUEUED or RUNNING jobs held by nobody or whose lease expired by ``now``, oldest
        first. A hint only: take one with ``claim_job``."""

    @abstractmethod
    async def renew_lease(self, job_id: str, owner: str, lease_s: float, *,
                          now: float | None = None, progress: bytes | None = None) -> bool:
        """Extend ``owner``'s lease to ``now + lease_s``; False when ``owner`` no longer holds
        the job (another coordinator claimed it) or the job has ended: stop working on it.

        ``progress`` (``encode_progress``), when given, is stored in the same write (a
        coordinator that takes over or follows the job answers it); None keeps what is stored.
        """

    @abstractmethod
    async def release(self, job_id: str, owner: str) -> bool:
        """Give the lease up (the state is kept), so any coordinator can claim the job at once;
        False when ``owner`` did not hold it."""

    @abstractmethod
    async def transition(self, job_id: str, owner: str, from_states: Iterable[int],
                         to_state: int, *, error: str = "", results: bytes | None = None,
                         results_json: str | None = None, progress: bytes | None = None
                         ) -> JobRecord | None:
        """Compare-and-set the job's state.

        Applied only when ``owner`` holds the job and its state is in ``from_states``; then the
        state, error and (when given) results and progress are written in one transaction.
        Entering a terminal state ends the lease (``lease_until`` 0; ``owner`` kept as who
        finished it).
        Returns the updated record, or None when refused (nothing written).
        """

    @abstractmethod
    async def cancel_job(self, job_id: str, error: str) -> JobRecord | None:
        """Mark an unfinished job CANCELLED whoever holds it (a client may ask any coordinator
        of a shared store). Its holder's next lease renewal is refused, and it stops. Returns
        the updated record, or None when the job is unknown or already finished."""

    @abstractmethod
    async def put_results(self, job_id: str, owner: str, results: bytes,
                          results_json: str) -> bool:
        """Store the job's results (typed bytes and lm-eval's JSON) before it ends; only by
        the owner of a QUEUED or RUNNING job. False when refused."""

    # -- samples -----------------------------------------------------------------------------

    @abstractmethod
    async def put_samples(self, job_id: str, owner: str,
                          records: Iterable[tuple[str, str]]) -> bool:
        """Replace the job's samples with ``(task, record JSON)`` rows, in order; only by the
        owner of a QUEUED or RUNNING job. False when refused."""

    @abstractmethod
    async def _samples_page(self, job_id: str, after_seq: int, limit: int,
                            tasks: Sequence[str]) -> list[tuple[int, str, str]]:
        """``(seq, task, record)`` rows with ``seq > after_seq``, in order."""

    async def iter_samples(self, job_id: str, tasks: Iterable[str] = ()
                           ) -> AsyncIterator[tuple[str, str]]:
        """The job's ``(task, record JSON)`` rows in order (only ``tasks`` when given), read a
        page at a time."""
        wanted = list(tasks)
        after = -1
        while True:
            page = await self._samples_page(job_id, after, SAMPLES_PAGE, wanted)
            for _seq, task, record in page:
                yield task, record
            if len(page) < SAMPLES_PAGE:
                return
            after = page[-1][0]

    # -- answers -----------------------------------------------------------------------------

    @abstractmethod
    async def get_answers(self, fingerprint: str, request_ids: Iterable[str]
                          ) -> dict[str, bytes]:
        """The stored answers among ``request_ids`` for the model ``fingerprint``."""

    @abstractmethod
    async def put_answers(self, fingerprint: str, answers: Iterable[tuple[str, bytes]]
                          ) -> int:
        """Store ``(request id, answer)`` pairs; an answer already stored is kept (the first
        one wins). Returns how many were new. Shared by every job on that model."""

    async def put_answer_slices(self, fingerprint: str, answers: AnswerSlices) -> None:
        """``put_answers`` for answers cut from one buffer (a batch's response); returns when
        they are stored. A store overrides it when it can write them in bulk."""
        if len(answers):
            await self.put_answers(fingerprint, answers.pairs())

    @abstractmethod
    async def count_answers(self, fingerprint: str) -> int:
        """How many answers are stored for the model ``fingerprint``."""

    @abstractmethod
    async def has_answers(self, fingerprint: str) -> bool:
        """Whether any answer is stored for the model ``fingerprint`` (a job on a model with
        none skips the look-up of its requests)."""


def lease_now(now: float | None) -> float:
    """``now``, or this host's clock."""
    return time.time() if now is None else now
