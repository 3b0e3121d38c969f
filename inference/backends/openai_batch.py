"""OpenAI's Batch API (files + batches) through the official ``openai`` client.

Submit: the lines are uploaded as a JSONL file (``POST /v1/files``, purpose ``batch``; each line
``{"custom_id", "method": "POST", "url": endpoint, "body"}``) and a batch is created on it
(``POST /v1/batches``, completion window 24h, metadata ``{"evalfleet_tag": tag}``). Before
creating, the most recent batches (``GET /v1/batches``, newest first, up to
:data:`MAX_TAG_SCAN`) are searched for the tag: a batch found is returned instead (``reused``).
A create that fails in a way that may have created the batch anyway (a timeout, a 5xx) is
followed by the same search before it is sent again.

Poll: ``GET /v1/batches/{id}``; its status maps to :class:`ProviderBatchState` and its
``request_counts`` (total, completed, failed) are the counts. Once terminal, the output file's
lines (``response.status_code`` 200, ``response.body``) and the error file's lines (an HTTP
error's ``response.body.error``, or ``error`` for a request that expired or was cancelled) are
read with ``GET /v1/files/{id}/content``. Every call goes through the backend's client, headers,
retries and backoff (``api_http``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from evalfleet.inference.backends.api_http import RetryError, backoff_seconds
from evalfleet.inference.backends.base import BatchSubmission, Cost, ItemError, ProviderBatchState
from evalfleet.inference.backends.provider_batch import ProviderStatus, jsonl, line_error

#: The batch metadata key that carries the caller's idempotency tag.
TAG_KEY = "evalfleet_tag"
#: Most recent batches searched for a tag before a new batch is created.
MAX_TAG_SCAN = 1000
_STATES = {
    "validating": ProviderBatchState.IN_PROGRESS, "in_progress": ProviderBatchState.IN_PROGRESS,
    "finalizing": ProviderBatchState.IN_PROGRESS, "cancelling": ProviderBatchState.IN_PROGRESS,
    "completed": ProviderBatchState.ENDED, "expired": ProviderBatchState.EXPIRED,
    "failed": ProviderBatchState.FAILED, "cancelled": ProviderBatchState.CANCELED,
}


class OpenAIBatches:
    """The Batch API of an OpenAI-compatible server, for ``endpoint`` (``/v1/completions`` or
    ``/v1/chat/completions``) lines."""

    max_lines = 50_000  # OpenAI's limit of requests per batch

    def __init__(self, backend: Any, endpoint: str) -> None:
        self.backend = backend
        self.endpoint = endpoint

    async def _call(self, make, cost: Cost, what: str, **kw) -> Any:
        return await self.backend.http(make, cost, what, **kw)

    async def find(self, tag: str, cost: Cost) -> str | None:
        """The id of the most recent batch tagged ``tag`` (searching :data:`MAX_TAG_SCAN`)."""
        after: str | None = None
        scanned = 0
        while scanned < MAX_TAG_SCAN:
            extra = {"after": after} if after else {}
            page = await self._call(
                lambda extra=extra: self.backend.client.batches.list(limit=100, **extra), cost,
                "batch lookup")
            for batch in page.data:
                if (batch.metadata or {}).get(TAG_KEY) == tag:
                    return batch.id
            scanned += len(page.data)
            if not page.data or page.has_more is False:
                return None
            after = page.data[-1].id
        return None

    async def submit(self, tag: str, bodies: dict[int, dict[str, Any]], cost: Cost
                     ) -> BatchSubmission:
        found = await self.find(tag, cost)
        if found:
            return BatchSubmission(found, reused=True)
        data = jsonl([{"custom_id": str(i), "method": "POST", "url": self.endpoint, "body": b}
                      for i, b in bodies.items()])
        uploaded = await self._call(
            lambda: self.backend.client.files.create(
                file=("evalfleet-batch.jsonl", data, "application/jsonl"), purpose="batch"),
            cost, "batch upload")
        attempt = 0
        while True:
            attempt += 1
            try:
                batch = await self._call(
                    lambda: self.backend.client.batches.create(
                        input_file_id=uploaded.id, endpoint=self.endpoint,
                        completion_window="24h", metadata={TAG_KEY: tag}),
                    cost, "batch create", attempts=1)
                return BatchSubmission(batch.id)
            except RetryError as exc:
                if not exc.failure.retryable or attempt >= self.backend.args.max_retries:
                    raise
                found = await self.find(tag, cost)  # it may have been created all the same
                if found:
                    return BatchSubmission(found, reused=True)
                await asyncio.sleep(exc.failure.retry_after_s or backoff_seconds(attempt))

    async def status(self, batch_id: str, cost: Cost) -> ProviderStatus:
        batch = await self._call(lambda: self.backend.client.batches.retrieve(batch_id), cost,
                                 "batch poll")
        counts = batch.request_counts
        total = counts.total if counts else 0
        done = counts.completed if counts else 0
        failed = counts.failed if counts else 0
        state = _STATES.get(batch.status, ProviderBatchState.IN_PROGRESS)
        errors = getattr(batch.errors, "data", None) or []
        reason = "; ".join(f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "")
                           for e in errors[:3])
        return ProviderStatus(state, total, done, failed, max(0, total - done - failed), batch,
                              reason)

    async def results(self, status: ProviderStatus, cost: Cost
                      ) -> dict[int, dict[str, Any] | ItemError]:
        batch = status.ref
        out: dict[int, dict[str, Any] | ItemError] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self._call(
                lambda file_id=file_id: self.backend.client.files.content(file_id), cost,
                "batch results")
            for line in content.text.splitlines():
                if line.strip():
                    index, outcome = _line_outcome(json.loads(line))
                    out[index] = outcome
        return out


def _line_outcome(record: dict[str, Any]) -> tuple[int, dict[str, Any] | ItemError]:
    """(item index, response body or ItemError) of one output or error file line."""
    index = int(record["custom_id"])
    response = record.get("response") or {}
    error = record.get("error")
    status = response.get("status_code")
    if status == 200 and not error:
        return index, response.get("body") or {}
    if error:
        return index, line_error(status, f"{error.get('code')}: {error.get('message')}")
    body = response.get("body") or {}
    detail = body.get("error", body) if isinstance(body, dict) else body
    message = detail.get("message") if isinstance(detail, dict) else detail
    return index, line_error(status, str(message or "no detail")[:300])
