"""Provider-batch records: which of a job's requests went to a provider's batch API, and where.

A job run with ``batch_api=true`` sends its missing requests in chunks, each chunk one batch at
the provider (OpenAI's files + batches, Anthropic's message batches). A chunk's record is
written (state ``submitting``, with the idempotency tag) *before* the batch is submitted and
gets the provider's batch id right after, so a coordinator that dies at any point, or another
coordinator of the same store, knows every batch the job has at the provider: it resumes
polling those with an id and resubmits a ``submitting`` one with the same tag (the provider's
tag look-up returns the batch already made), and never submits a chunk twice.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

#: Record states. ``submitting``: written, SubmitBatch not yet answered; ``submitted``: the
#: provider's id stored, being polled; ``done``: the provider ended it and its answers are
#: stored; ``failed``: it ended (expired, failed, canceled) or answered only some requests, and
#: whatever it left unanswered went into a new chunk (``attempt`` + 1).
SUBMITTING, SUBMITTED, DONE, FAILED = "submitting", "submitted", "done", "failed"
BATCH_STATES = (SUBMITTING, SUBMITTED, DONE, FAILED)
#: Column order of provider-batch rows in every implementation's ``SELECT``.
BATCH_COLUMNS = ("job_id", "chunk", "kind", "request_ids", "tag", "batch_id", "state",
                 "attempt", "created_at", "updated_at")


@dataclass
class ProviderBatchRecord:
    """One chunk of a job's requests sent as one provider batch."""

    job_id: str
    chunk: str  # unique within the job, e.g. "generate_until-0003"
    kind: str  # the request kind: loglikelihood | loglikelihood_rolling | generate_until
    request_ids: list[str]  # the requests in it, in submission order
    tag: str  # the idempotency tag the batch is submitted under
    batch_id: str = ""  # the provider's id; "" until SubmitBatch answered
    state: str = SUBMITTING
    attempt: int = 1  # 1 for a job's first chunks; a resend of a chunk's leftovers is + 1
    created_at: float = 0.0
    updated_at: float = 0.0


def batch_values(record: ProviderBatchRecord) -> tuple:
    """The record as a row in ``BATCH_COLUMNS`` order (request ids as a JSON array)."""
    return (record.job_id, record.chunk, record.kind, json.dumps(record.request_ids),
            record.tag, record.batch_id, record.state, record.attempt, record.created_at,
            record.updated_at)


def batch_from_row(row: Sequence) -> ProviderBatchRecord:
    """A ``ProviderBatchRecord`` from a row selected in ``BATCH_COLUMNS`` order."""
    return ProviderBatchRecord(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5],
                               row[6], int(row[7]), float(row[8]), float(row[9]))


def check_batch_state(state: str | None) -> None:
    """``ValueError`` for a state that is not one of ``BATCH_STATES``."""
    if state is not None and state not in BATCH_STATES:
        raise ValueError(f"provider batch state must be one of {BATCH_STATES}, not {state!r}")


class ProviderBatchStore(ABC):
    """The provider-batch part of the ``JobStore`` contract."""

    @abstractmethod
    async def add_provider_batch(self, record: ProviderBatchRecord) -> bool:
        """Insert the record (``created_at``/``updated_at`` set by the store when 0); False,
        and nothing written, when the job already has a chunk of that name."""

    @abstractmethod
    async def update_provider_batch(self, job_id: str, chunk: str, *,
                                    batch_id: str | None = None,
                                    state: str | None = None) -> bool:
        """Set the chunk's provider batch id and/or state (None keeps it) and ``updated_at``;
        False when the job has no such chunk."""

    @abstractmethod
    async def list_provider_batches(self, job_id: str) -> list[ProviderBatchRecord]:
        """The job's chunk records, oldest first (then by chunk name)."""
