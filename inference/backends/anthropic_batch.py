"""Anthropic's Message Batches API through the official ``anthropic`` client.

Submit: ``POST /v1/messages/batches`` with ``requests: [{"custom_id", "params"}]``, ``params``
being the online Messages request body. Anthropic's batches carry no metadata, so a batch cannot
be found again by its tag: every submit creates one (the caller stores the id at once).

Poll: ``GET /v1/messages/batches/{id}``: ``processing_status`` "in_progress" or "canceling" is
in progress; "ended" is CANCELED after a cancel (``cancel_initiated_at``), EXPIRED when requests
expired and none succeeded or errored, else ENDED. ``request_counts`` (processing, succeeded,
errored, canceled, expired; Anthropic fills the last four once the batch ended) give the counts,
errored being errored + canceled + expired. Once ended, the JSONL at ``results_url`` is read
raw (each line ``{"custom_id", "result": {"type": "succeeded", "message"} | {"type":
"errored", "error"} | {"type": "canceled"} | {"type": "expired"}}``), so that each message is
parsed by the online path's parser exactly as a /v1/messages answer.
"""

from __future__ import annotations

import json
from typing import Any

from evalfleet.inference.backends.api_http import http_module
from evalfleet.inference.backends.base import BatchSubmission, Cost, ItemError, ProviderBatchState
from evalfleet.inference.backends.provider_batch import ProviderStatus, line_error


class AnthropicBatches:
    """The Message Batches API of an ``anthropic-chat`` backend."""

    max_lines = 100_000  # Anthropic's limit of requests per batch

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    async def _call(self, make, cost: Cost, what: str) -> Any:
        return await self.backend.http(make, cost, what)

    async def submit(self, tag: str, bodies: dict[int, dict[str, Any]], cost: Cost
                     ) -> BatchSubmission:
        requests = [{"custom_id": str(i), "params": body} for i, body in bodies.items()]
        batch = await self._call(
            lambda: self.backend.client.messages.batches.create(requests=requests), cost,
            "batch create")
        return BatchSubmission(batch.id)

    async def status(self, batch_id: str, cost: Cost) -> ProviderStatus:
        batch = await self._call(
            lambda: self.backend.client.messages.batches.retrieve(batch_id), cost, "batch poll")
        c = batch.request_counts
        errored = c.errored + c.canceled + c.expired
        total = c.processing + c.succeeded + errored
        if batch.processing_status != "ended":
            state = ProviderBatchState.IN_PROGRESS
        elif batch.cancel_initiated_at is not None:
            state = ProviderBatchState.CANCELED
        elif c.expired and not (c.succeeded or c.errored):
            state = ProviderBatchState.EXPIRED
        else:
            state = ProviderBatchState.ENDED
        return ProviderStatus(state, total, c.succeeded, errored, c.processing, batch)

    async def results(self, status: ProviderStatus, cost: Cost
                      ) -> dict[int, dict[str, Any] | ItemError]:
        url = status.ref.results_url
        if not url:
            return {}
        response = await self._call(
            lambda: self.backend.client.get(url, cast_to=http_module().Response,
                                            options={"headers": {"Accept": "application/binary"}}),
            cost, "batch results")
        out: dict[int, dict[str, Any] | ItemError] = {}
        for line in response.text.splitlines():
            if line.strip():
                record = json.loads(line)
                out[int(record["custom_id"])] = _result(record.get("result") or {})
        return out


def _result(result: dict[str, Any]) -> dict[str, Any] | ItemError:
    """A succeeded line's message, or the ItemError of an errored, canceled or expired one."""
    kind = result.get("type")
    if kind == "succeeded":
        return result.get("message") or {}
    if kind == "errored":
        error = (result.get("error") or {}).get("error") or {}
        status = 400 if error.get("type") == "invalid_request_error" else None
        return line_error(status, f"{error.get('type')}: {error.get('message')}")
    return line_error(None, f"the request was {kind}")
