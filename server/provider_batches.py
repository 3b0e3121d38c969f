"""A job's missing requests computed through the provider's batch API (model args
``batch_api=true``: OpenAI's files + batches, Anthropic's message batches; about half the price,
answers within a day).

The missing loglikelihood and generation requests are cut into chunks of at most
``EVALFLEET_BATCH_CHUNK`` requests (default 10,000), one provider batch each. A chunk's record
is written to the store (state ``submitting``, with its tag) *before* ``SubmitBatch`` and gets
the provider's batch id right after, so a coordinator killed at any point, restarted on the
same store (or another coordinator of a shared PostgreSQL store), resumes: it polls the
batches with an id and resubmits a ``submitting`` chunk under the same tag (OpenAI finds the
batch made by that tag; Anthropic's batches carry no tag, so only a crash between its submit
and the id's write could submit twice). No chunk is ever submitted twice otherwise.

Every ``EVALFLEET_BATCH_POLL_S`` seconds (default 30) each open batch is polled through any
ready worker of the model with the batch API (workers keep no batch state), and the job's
events carry the provider's counts. An ended batch's answers are stored through the same path
as online answers (``dispatch.store_answers``: the answers cache shared by every job); the
requests it left unanswered (partly failed, expired, cancelled) go again, alone, in a new
chunk (``attempt`` + 1, a new tag), up to ``MAX_ATTEMPTS`` tries, and a request the provider
refused as invalid fails the job naming its task and document. Rolling loglikelihood requests
(no batch form) are left to the online pass that follows.

A cancelled job cancels nothing at the provider: the worker contract has no cancel call, and
the provider bills what it already ran; the batches finish or expire there and nothing polls
them again.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import grpc
import numpy as np

from evalfleet.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
)
from evalfleet.common.logging import get_logger
from evalfleet.common.request_kind import RequestKind
from evalfleet.server.job import Job
from evalfleet.server.scheduler import Scheduler
from evalfleet.server.store import AnswerSlices, JobStore
from evalfleet.server.store.batch_records import (
    DONE,
    FAILED,
    SUBMITTED,
    SUBMITTING,
    ProviderBatchRecord,
)
from evalfleet.server.usage import count_provider_batch
from evalfleet.server.wire import ExpectedIds, split_response
from evalfleet.server.workers import RequestFailedError, WorkItem, encode_item
from evalfleet.v1 import inference_pb2 as ipb

log = get_logger("provider_batches")

#: The request kinds a provider batch carries (their SubmitBatchRequest fields).
BATCH_KINDS = (RequestKind.LOGLIKELIHOOD, RequestKind.GENERATE_UNTIL)
#: Tries per request (its first batch and the resends of what a batch left unanswered).
MAX_ATTEMPTS = 3
#: Seconds one SubmitBatch / PollBatch call may take.
RPC_TIMEOUT_S = 300.0
_REQUEST = {RequestKind.LOGLIKELIHOOD: ipb.LoglikelihoodRequest,
            RequestKind.GENERATE_UNTIL: ipb.GenerateUntilRequest}
_IN_PROGRESS = ipb.PROVIDER_BATCH_STATE_IN_PROGRESS
_WORKER_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN)


def chunk_size() -> int:
    """Requests per provider batch (``EVALFLEET_BATCH_CHUNK``, default 10,000)."""
    return int(_setting("EVALFLEET_BATCH_CHUNK", "10000", int, "a whole number of requests"))


def poll_interval_s() -> float:
    """Seconds between polls of a job's open batches (``EVALFLEET_BATCH_POLL_S``, default 30)."""
    return _setting("EVALFLEET_BATCH_POLL_S", "30", float, "a number of seconds")


def _setting(name: str, default: str, parse: Any, what: str) -> float:
    """The coordinator's environment variable ``name``: a positive ``what``, else a one-line
    ``InvalidArgumentError`` naming it."""
    text = os.environ.get(name, default)
    try:
        value = parse(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise InvalidArgumentError(f"{name}={text!r} on the coordinator: give {what} above 0 "
                                   f"(default {default})")
    return value


def _requests(kind: str, items: list[WorkItem]) -> Any:
    """The items as their kind's request message (SubmitBatch's and PollBatch's oneof)."""
    return _REQUEST[kind].FromString(b"".join(encode_item(w) for w in items))


class ProviderBatches:
    """One job's provider batches: submitted once, polled until they end, answers stored."""

    def __init__(self, job: Job, store: JobStore, scheduler: Scheduler,
                 count: Any, store_answers: Any) -> None:
        self.job, self.store, self.scheduler = job, store, scheduler
        self.count = count  # count(request ids): adds answered requests to job.done
        self.store_answers = store_answers  # dispatch.store_answers
        self.fingerprint = job.model_info.fingerprint
        self.model_key = (job.model_info.backend, self.fingerprint)
        self.open: list[ProviderBatchRecord] = []
        self.seen: dict[str, tuple] = {}  # chunk -> last counts published
        self.chunks = 0  # records the job has (names new chunks)

    async def run(self, missing: list[WorkItem]) -> None:
        """Compute ``missing`` (those of a batch kind) through provider batches."""
        job = self.job
        records = await self.store.list_provider_batches(job.id)
        self.chunks = len(records)
        self.open = [r for r in records if r.state in (SUBMITTING, SUBMITTED)]
        covered = {rid for r in self.open for rid in r.request_ids}
        fresh = [w for w in missing if w.request_type in BATCH_KINDS
                 and w.request_id not in covered]
        resumed = len(self.open)
        size = chunk_size()
        for kind in BATCH_KINDS:
            ids = [w.request_id for w in fresh if w.request_type == kind]
            for start in range(0, len(ids), size):
                await self._add(kind, ids[start:start + size], attempt=1)
        if not self.open:
            return
        job.publish(f"{sum(len(r.request_ids) for r in self.open)} requests in "
                    f"{len(self.open)} provider batches ({resumed} resumed from the store)")
        log.info("provider_batches", job=job.id, batches=len(self.open), resumed=resumed)
        while self.open:
            for record in list(self.open):
                if record.state == SUBMITTING:
                    await self._submit(record)
                else:
                    await self._poll(record)
            if self.open:
                await asyncio.sleep(poll_interval_s())

    async def _add(self, kind: str, ids: list[str], attempt: int, name: str = "") -> None:
        """Write a new chunk's record (before anything is submitted) and queue it."""
        chunk = name or f"{kind}-{self.chunks:04d}"
        self.chunks += 1
        record = ProviderBatchRecord(self.job.id, chunk, kind, ids,
                                     tag=f"evalfleet-{self.job.id}-{chunk}", attempt=attempt)
        if await self.store.add_provider_batch(record):
            self.open.append(record)

    async def _submit(self, record: ProviderBatchRecord) -> None:
        items = [self.job.plan.work[rid] for rid in record.request_ids]
        request = ipb.SubmitBatchRequest(tag=record.tag,
                                         **{record.kind: _requests(record.kind, items)})
        response = await self._call("SubmitBatch", request)
        await self.store.update_provider_batch(self.job.id, record.chunk,
                                               batch_id=response.batch_id, state=SUBMITTED)
        record.batch_id, record.state = response.batch_id, SUBMITTED
        log.info("provider_batch_submitted", job=self.job.id, chunk=record.chunk,
                 batch=record.batch_id, requests=len(items), reused=response.reused)
        again = ", found again by its tag" if response.reused else ""
        self.job.publish(f"provider batch {record.batch_id} submitted ({len(items)} "
                         f"{record.kind} requests{again})")

    async def _poll(self, record: ProviderBatchRecord) -> None:
        status = await self._call("PollBatch", ipb.PollBatchRequest(batch_id=record.batch_id))
        counts = (status.state, status.total, status.succeeded, status.errored, status.pending)
        if self.seen.get(record.chunk) != counts:
            self.seen[record.chunk] = counts
            state = ipb.ProviderBatchState.Name(status.state).removeprefix(
                "PROVIDER_BATCH_STATE_").lower()
            self.job.publish(f"provider batch {record.batch_id}: {state}, {status.succeeded} "
                             f"of {status.total} succeeded, {status.errored} errored, "
                             f"{status.pending} pending")
        if status.state == _IN_PROGRESS:
            return
        items = [self.job.plan.work[rid] for rid in record.request_ids]
        done = await self._call("PollBatch", ipb.PollBatchRequest(
            batch_id=record.batch_id, **{record.kind: _requests(record.kind, items)}))
        await self._ended(record, done)

    async def _ended(self, record: ProviderBatchRecord, response: ipb.PollBatchResponse) -> None:
        """Store an ended batch's answers and resend what it left unanswered."""
        ids = record.request_ids
        raw = getattr(response, record.kind).SerializeToString()
        split = split_response(raw, record.kind, ExpectedIds(ids), np.arange(len(ids)))
        if len(split.answered):
            answered = [ids[i] for i in split.answered.tolist()]
            slices = AnswerSlices(answered, raw, split.starts, split.ends)
            await self.store_answers(self.store, self.fingerprint, slices, self.job,
                                     self.scheduler.metrics)
            count_provider_batch(self.job, record.kind, slices)  # usage (server.usage)
            self.count(answered)
        unanswered = [(ids[j], error) for j, error in split.errors]
        for rid, error in unanswered:
            if not (error.retryable or error.cancelled) or record.attempt >= MAX_ATTEMPTS:
                tries = "" if not error.retryable else f" after {record.attempt} provider batches"
                raise RequestFailedError(
                    rid, f"{self.job.plan.describe(rid)} was not answered by provider batch "
                    f"{record.batch_id}{tries}: {error.message}")
        if unanswered:
            self.job.publish(f"provider batch {record.batch_id} left {len(unanswered)} of "
                             f"{len(ids)} requests unanswered ({unanswered[0][1].message}); "
                             "resending only those")
            # Named after its parent: a coordinator that dies before the parent is marked
            # finds the resend's record already there on its next try and adds none.
            await self._add(record.kind, [rid for rid, _ in unanswered], record.attempt + 1,
                            name=f"{record.chunk.split('~')[0]}~{record.attempt + 1}")
        await self.store.update_provider_batch(self.job.id, record.chunk,
                                               state=FAILED if unanswered else DONE)
        record.state = FAILED if unanswered else DONE
        self.open.remove(record)

    def _workers(self) -> list:
        return [w for w in self.scheduler.registry.serving(self.model_key, self.job.allowed)
                if w.info.capabilities.batch_api]

    async def _call(self, method: str, request: Any) -> Any:
        """``method`` on a ready worker with the batch API, the next one when a worker does not
        answer; while none can, wait (the scheduler's ``no_worker_timeout_s`` in all)."""
        since = time.monotonic()
        waited = False
        while True:
            for worker in self._workers():
                client = worker.client
                try:
                    return await getattr(client.stub, method)(
                        request, timeout=RPC_TIMEOUT_S, metadata=client.metadata)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _WORKER_DOWN:
                        raise FailedPreconditionError(
                            f"worker {worker.address} refused {method} "
                            f"({exc.code().name}: {exc.details()})") from exc
                    log.warning("provider_batch_worker_failed", job=self.job.id,
                                worker=worker.address, method=method, error=exc.details())
            limit = self.scheduler.config.no_worker_timeout_s
            if time.monotonic() - since > limit:
                raise UnavailableError(
                    f"no worker of model {self.fingerprint[:19]} with the batch API answered "
                    f"{method} for {limit:.0f} s")
            if not waited:
                waited = True
                self.job.publish(f"waiting for a worker with the batch API to call {method}")
            await asyncio.sleep(min(poll_interval_s(), 1.0))


async def compute_by_provider_batches(job: Job, store: JobStore, scheduler: Scheduler,
                                      owners: tuple[dict[str, int], dict[str, list[int]]],
                                      store_answers: Any) -> None:
    """Compute the job's requests without a stored answer through provider batches
    (``owners``: ``dispatch.task_owners(job)``, to count progress per task). ``job.done``
    counts them meanwhile and is emptied at the end, for the online pass that follows."""
    first, extra = owners
    names = [p.task.name for p in job.plan.tasks]

    def count(ids: Any) -> None:
        for aid in ids:
            for index in (first[aid], *extra.get(aid, ())):
                job.done[names[index]] = job.done.get(names[index], 0) + 1

    fingerprint = job.model_info.fingerprint
    work = job.plan.work
    cached = await store.get_answers(fingerprint, list(work)) \
        if await store.has_answers(fingerprint) else {}
    count(cached)
    batches = ProviderBatches(job, store, scheduler, count, store_answers)
    await batches.run([item for aid, item in work.items() if aid not in cached])
    job.done.clear()
