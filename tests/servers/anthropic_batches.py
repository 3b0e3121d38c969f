"""Anthropic's Message Batches API for the Messages stand-in (anthropic_messages.py), each
request answered by the stand-in's own online handler (so batch answers equal online ones).

Shapes as Anthropic documents them (https://docs.anthropic.com/en/api/creating-message-batches,
/retrieving-message-batches, /listing-message-batches, /canceling-message-batches,
/retrieving-message-batch-results, and the guide
https://docs.anthropic.com/en/docs/build-with-claude/batch-processing):

* ``POST /v1/messages/batches`` ``{"requests": [{"custom_id", "params"}]}`` (custom_id
  ``^[a-zA-Z0-9_-]{1,64}$``, unique) -> a ``message_batch``: ``{"id": "msgbatch_...", "type":
  "message_batch", "processing_status": "in_progress" | "canceling" | "ended",
  "request_counts": {"processing", "succeeded", "errored", "canceled", "expired"} (the last
  four zero until the batch ended), "ended_at", "created_at", "expires_at", "archived_at",
  "cancel_initiated_at", "results_url"}`` (times RFC 3339; results_url set once ended);
* ``GET /v1/messages/batches/{id}``, ``GET /v1/messages/batches`` (newest first, ``{"data",
  "has_more", "first_id", "last_id"}``), ``POST /v1/messages/batches/{id}/cancel``;
* ``GET /v1/messages/batches/{id}/results``: JSONL, one ``{"custom_id", "result": {"type":
  "succeeded", "message"} | {"type": "errored", "error": {"type": "error", "error": {"type",
  "message"}}} | {"type": "canceled"} | {"type": "expired"}}`` per request.

The same key and ``anthropic-version`` headers as ``/v1/messages`` are required. Test controls:
see batch_standin.py.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from batch_standin import BatchRunner, newest_first_page, read_json, send_bytes, send_json

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
#: (succeeded, message or error object) answering one request's params.
Answer = Callable[[dict[str, Any]], tuple[bool, dict[str, Any]]]


def _now(delta_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat().replace("+00:00", "Z")


def _error(handler: Any, status: int, kind: str, message: str) -> None:
    send_json(handler, status, {"type": "error", "error": {"type": kind, "message": message}})


class AnthropicBatches:
    """The stand-in's message batches."""

    def __init__(self, answer: Answer, runner: BatchRunner) -> None:
        self.answer = answer
        self.runner = runner
        self.lock = threading.Lock()
        self.batches: dict[str, dict[str, Any]] = {}  # in creation order
        self.results: dict[str, bytes] = {}

    def handle(self, handler: Any, method: str) -> bool:
        """Answer a message batches or control request; False for any other path."""
        parts = urlsplit(handler.path)
        path = parts.path.rstrip("/")
        if self.runner.control(handler, method, path):
            return True
        segments = path.split("/")[1:]
        if segments[:3] != ["v1", "messages", "batches"]:
            return False
        if not handler.headers.get("x-api-key") and not (
                handler.headers.get("authorization") or "").startswith("Bearer "):
            _error(handler, 401, "authentication_error", "x-api-key (or Authorization: Bearer) "
                                                         "header is required")
            return True
        if not handler.headers.get("anthropic-version"):
            _error(handler, 400, "invalid_request_error", "anthropic-version header is required")
            return True
        rest = segments[3:]
        if method == "POST" and not rest:
            self._create(handler)
        elif method == "GET" and not rest:
            self._list(handler, parse_qs(parts.query))
        else:
            self._one(handler, method, rest)
        return True

    def _one(self, handler: Any, method: str, rest: list[str]) -> None:
        with self.lock:
            batch = self.batches.get(rest[0])
            found = dict(batch) if batch else None
            results = self.results.get(rest[0])
        if found is None:
            _error(handler, 404, "not_found_error", f"message batch {rest[0]} not found")
        elif method == "GET" and len(rest) == 1:
            send_json(handler, 200, found)
        elif method == "GET" and rest[1:] == ["results"]:
            if results is None:
                _error(handler, 400, "invalid_request_error",
                       f"message batch {rest[0]} has not ended: no results yet")
            else:
                send_bytes(handler, 200, results, "application/binary")
        elif method == "POST" and rest[1:] == ["cancel"]:
            send_json(handler, 200, self._cancel(rest[0]))
        else:
            _error(handler, 404, "not_found_error", f"no route {handler.path}")

    def _list(self, handler: Any, query: dict[str, list[str]]) -> None:
        limit = int((query.get("limit") or ["20"])[0])
        after = (query.get("after_id") or [None])[0]
        with self.lock:
            page, more = newest_first_page([dict(b) for b in self.batches.values()], limit, after)
        send_json(handler, 200, {"data": page, "has_more": more,
                                 "first_id": page[0]["id"] if page else None,
                                 "last_id": page[-1]["id"] if page else None})

    def _create(self, handler: Any) -> None:
        try:
            body = read_json(handler) or {}
        except ValueError:
            _error(handler, 400, "invalid_request_error", "body is not JSON")
            return
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            _error(handler, 400, "invalid_request_error", "requests: field required (a "
                                                          "non-empty list)")
            return
        seen: set[str] = set()
        for i, request in enumerate(requests):
            custom_id = request.get("custom_id") if isinstance(request, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id) \
                    or custom_id in seen or not isinstance(request.get("params"), dict):
                _error(handler, 400, "invalid_request_error",
                       f"requests.{i}: custom_id must match ^[a-zA-Z0-9_-]{{1,64}}$ and be "
                       "unique, and params must be an object")
                return
            seen.add(custom_id)
        batch_id = f"msgbatch_{uuid.uuid4().hex[:24]}"
        batch = {"id": batch_id, "type": "message_batch", "processing_status": "in_progress",
                 "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0,
                                    "canceled": 0, "expired": 0},
                 "ended_at": None, "created_at": _now(), "expires_at": _now(86400),
                 "archived_at": None, "cancel_initiated_at": None, "results_url": None}
        host = handler.headers.get("Host") or "127.0.0.1"
        url = f"http://{host}/v1/messages/batches/{batch_id}/results"
        with self.lock:
            self.batches[batch_id] = batch
            answer = dict(batch)
        self.runner.start(batch_id, lambda wait: self._run(batch_id, requests, url, wait))
        send_json(handler, 200, answer)

    def _run(self, batch_id: str, requests: list[dict[str, Any]], url: str,
             wait: Callable[[], bool]) -> None:
        expired = wait()  # held (--hold-batches) until released
        counts = {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                  "expired": 0}
        lines = []
        for request in requests:
            with self.lock:
                canceling = self.batches[batch_id]["processing_status"] == "canceling"
            if expired or canceling:
                kind = "expired" if expired else "canceled"
                result: dict[str, Any] = {"type": kind}
            elif self.runner.forced_error():
                kind, result = "errored", {"type": "errored", "error": {
                    "type": "error", "error": {
                        "type": "api_error",
                        "message": "stand-in: this batch request was made to fail "
                                   "(--batch-error-first)"}}}
            else:
                ok, payload = self.answer(request["params"])
                self.runner.count(ok)
                kind = "succeeded" if ok else "errored"
                result = {"type": kind, "message": payload} if ok else \
                    {"type": kind, "error": {"type": "error", "error": payload}}
            counts["processing"] -= 1
            counts[kind] += 1
            lines.append(json.dumps({"custom_id": request["custom_id"], "result": result}))
        with self.lock:
            self.results[batch_id] = ("\n".join(lines) + "\n").encode()
            self.batches[batch_id].update(processing_status="ended", ended_at=_now(),
                                          request_counts=counts, results_url=url)

    def _cancel(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            batch = self.batches[batch_id]
            if batch["processing_status"] == "in_progress":
                batch.update(processing_status="canceling", cancel_initiated_at=_now())
        self.runner.wake(batch_id)  # a held batch ends now: its requests were not answered
        with self.lock:
            return dict(self.batches[batch_id])
