"""OpenAI's Files and Batch APIs for the OpenAI-compatible stand-in (openai_compat.py), each
batch line answered by the stand-in's own online handler (so batch answers equal online ones).

Shapes as OpenAI documents them (https://platform.openai.com/docs/api-reference/batch and
/files, and the guide https://platform.openai.com/docs/guides/batch):

* ``POST /v1/files`` (multipart: ``file``, ``purpose``) -> a File object ``{"id": "file-...",
  "object": "file", "bytes", "created_at", "filename", "purpose", "status": "processed",
  "expires_at", "status_details"}``; ``GET /v1/files/{id}`` and ``GET /v1/files/{id}/content``;
* ``POST /v1/batches`` ``{"input_file_id", "endpoint", "completion_window": "24h",
  "metadata"}`` -> a Batch object (status ``validating``); ``GET /v1/batches/{id}``;
  ``GET /v1/batches?limit=&after=`` (newest first, ``{"object": "list", "data", "first_id",
  "last_id", "has_more"}``); ``POST /v1/batches/{id}/cancel``;
* a batch goes validating -> in_progress -> finalizing -> completed (or failed when its input
  file is invalid, expired, cancelling -> cancelled), with ``request_counts`` ``{"total",
  "completed", "failed"}``; the output file holds ``{"id": "batch_req_...", "custom_id",
  "response": {"status_code": 200, "request_id", "body"}, "error": null}`` per answered line,
  the error file the lines answered with an HTTP error (their ``response.body.error``) and the
  expired or cancelled ones (``"response": null, "error": {"code": "batch_expired" |
  "batch_cancelled", "message"}``); a file that would be empty is not created (its id is null).

Test controls: see batch_standin.py.
"""

from __future__ import annotations

import email.parser
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from batch_standin import BatchRunner, newest_first_page, read_json, send_bytes, send_json

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
#: (status, JSON body) answering one line's request body on ``url``.
Answer = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


def _error(handler: Any, status: int, message: str, kind: str = "invalid_request_error",
           param: str | None = None) -> None:
    send_json(handler, status, {"error": {"message": message, "type": kind, "param": param,
                                          "code": None}})


class OpenAIBatches:
    """The stand-in's files and batches."""

    def __init__(self, answer: Answer, runner: BatchRunner) -> None:
        self.answer = answer
        self.runner = runner
        self.lock = threading.Lock()
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # in creation order

    # ------------------------------------------------------------------ routing
    def handle(self, handler: Any, method: str) -> bool:
        """Answer a files, batches or control request; False for any other path."""
        parts = urlsplit(handler.path)
        path = parts.path.rstrip("/")
        if self.runner.control(handler, method, path):
            return True
        segments = path.split("/")[1:]  # ["v1", "files", id, "content"]
        if segments[:2] == ["v1", "files"]:
            self._files(handler, method, segments[2:])
        elif segments[:2] == ["v1", "batches"]:
            self._batches(handler, method, segments[2:], parse_qs(parts.query))
        else:
            return False
        return True

    def _files(self, handler: Any, method: str, rest: list[str]) -> None:
        if method == "POST" and not rest:
            self._upload(handler)
            return
        with self.lock:
            found = self.files.get(rest[0]) if rest else None
        if method != "GET" or found is None or len(rest) > 2 or rest[1:] not in ([], ["content"]):
            _error(handler, 404, f"No such File object: {rest[0] if rest else ''}")
        elif rest[1:] == ["content"]:
            send_bytes(handler, 200, found[1], "application/octet-stream")
        else:
            send_json(handler, 200, found[0])

    def _upload(self, handler: Any) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + handler.headers.get("Content-Type", "").encode() + b"\r\n\r\n"
            + raw)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.get_payload() if message.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields or "purpose" not in fields:
            _error(handler, 400, "file and purpose are required (multipart/form-data)")
            return
        purpose = fields["purpose"][1].decode()
        if purpose != "batch":
            _error(handler, 400, f"this stand-in takes purpose 'batch', got {purpose!r}",
                   param="purpose")
            return
        send_json(handler, 200, self._store(fields["file"][0] or "upload.jsonl", "batch",
                                            fields["file"][1]))

    def _store(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        meta = {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(data),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                "status": "processed", "expires_at": None, "status_details": None}
        with self.lock:
            self.files[meta["id"]] = (meta, data)
        return meta

    def _batches(self, handler: Any, method: str, rest: list[str],
                 query: dict[str, list[str]]) -> None:
        if method == "POST" and not rest:
            self._create(handler)
            return
        if method == "GET" and not rest:
            self._list(handler, query)
            return
        with self.lock:
            batch = self.batches.get(rest[0])
            found = dict(batch) if batch else None
        if found is None:
            _error(handler, 404, f"No such Batch object: {rest[0]}")
        elif method == "GET" and len(rest) == 1:
            send_json(handler, 200, found)
        elif method == "POST" and rest[1:] == ["cancel"]:
            send_json(handler, 200, self._cancel(rest[0]))
        else:
            _error(handler, 404, f"no route {handler.path}")

    def _list(self, handler: Any, query: dict[str, list[str]]) -> None:
        limit = int((query.get("limit") or ["20"])[0])
        after = (query.get("after") or [None])[0]
        with self.lock:
            page, more = newest_first_page([dict(b) for b in self.batches.values()], limit, after)
        send_json(handler, 200, {"object": "list", "data": page,
                                 "first_id": page[0]["id"] if page else None,
                                 "last_id": page[-1]["id"] if page else None,
                                 "has_more": more})

    # ------------------------------------------------------------------ batches
    def _create(self, handler: Any) -> None:
        try:
            body = read_json(handler) or {}
        except ValueError:
            _error(handler, 400, "body is not JSON")
            return
        endpoint, window = body.get("endpoint"), body.get("completion_window")
        with self.lock:
            source = self.files.get(body.get("input_file_id") or "")
        if source is None:
            _error(handler, 400, f"No such File object: {body.get('input_file_id')}",
                   param="input_file_id")
            return
        if endpoint not in ENDPOINTS:
            _error(handler, 400, f"endpoint must be one of {', '.join(ENDPOINTS)}",
                   param="endpoint")
            return
        if window != "24h":
            _error(handler, 400, "completion_window must be '24h'", param="completion_window")
            return
        now = int(time.time())
        batch = {"id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": endpoint,
                 "errors": None, "input_file_id": source[0]["id"], "completion_window": window,
                 "status": "validating", "output_file_id": None, "error_file_id": None,
                 "created_at": now, "in_progress_at": None, "expires_at": now + 86400,
                 "finalizing_at": None, "completed_at": None, "failed_at": None,
                 "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0},
                 "metadata": body.get("metadata")}
        with self.lock:
            self.batches[batch["id"]] = batch
            answer = dict(batch)
        self.runner.start(batch["id"], lambda wait: self._run(batch["id"], source[1], wait))
        send_json(handler, 200, answer)

    def _update(self, batch_id: str, **changes: Any) -> dict[str, Any]:
        with self.lock:
            batch = self.batches[batch_id]
            batch.update(changes)
            return dict(batch)

    def _run(self, batch_id: str, data: bytes, wait: Callable[[], bool]) -> None:
        batch = self._update(batch_id)
        lines, errors = _validate(data, batch["endpoint"])
        if self.runner.forced_failure():
            errors = [{"code": "stand_in_failure", "message": "stand-in: this batch was made to "
                       "fail (fail_next)", "param": None, "line": None}]
        if errors:
            self._update(batch_id, status="failed", failed_at=int(time.time()),
                         errors={"object": "list", "data": errors})
            return
        self._update(batch_id, status="in_progress", in_progress_at=int(time.time()),
                     request_counts={"total": len(lines), "completed": 0, "failed": 0})
        expired = wait()  # held (--hold-batches) until released
        output: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for line in lines:
            status = self._update(batch_id)["status"]
            if expired or status == "cancelling":
                code = "batch_expired" if expired else "batch_cancelled"
                failures.append(_line(line, None, {"code": code, "message": (
                    "This request could not be executed before the completion window expired."
                    if expired else "This request was cancelled.")}))
                continue
            if self.runner.forced_error():
                code, body = 500, {"error": {"message": "stand-in: this batch line was made to "
                                                        "fail (--batch-error-first)",
                                             "type": "server_error", "param": None,
                                             "code": None}}
            else:
                code, body = self.answer(line["url"], line["body"])
                self.runner.count(code == 200)
            (output if code == 200 else failures).append(_line(line, {
                "status_code": code, "request_id": f"req_{uuid.uuid4().hex[:24]}",
                "body": body}, None))
            counts = {"total": len(lines), "completed": len(output),
                      "failed": len([f for f in failures if f["response"]])}
            self._update(batch_id, request_counts=counts)
        self._finish(batch_id, output, failures, expired)

    def _finish(self, batch_id: str, output: list[dict[str, Any]],
                failures: list[dict[str, Any]], expired: bool) -> None:
        now = int(time.time())
        status = self._update(batch_id)["status"]
        self._update(batch_id, status="finalizing", finalizing_at=now)
        files = {}
        for key, records in (("output_file_id", output), ("error_file_id", failures)):
            if records:
                data = "".join(json.dumps(r) + "\n" for r in records).encode()
                files[key] = self._store(f"{batch_id}_{key[:-8]}.jsonl",
                                         f"batch_{key[:-8]}", data)["id"]
        total = len(output) + len(failures)
        counts = {"total": total, "completed": len(output), "failed": len(failures)}
        if expired:
            final = {"status": "expired", "expired_at": now}
        elif status == "cancelling":
            final = {"status": "cancelled", "cancelled_at": now}
        else:
            final = {"status": "completed", "completed_at": now}
        self._update(batch_id, request_counts=counts, **files, **final)

    def _cancel(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            batch = self.batches[batch_id]
            if batch["status"] in ("validating", "in_progress"):
                batch.update(status="cancelling", cancelling_at=int(time.time()))
        self.runner.wake(batch_id)  # a held batch ends now: its lines were not answered
        return self._update(batch_id)


def _line(line: dict[str, Any], response: dict[str, Any] | None,
          error: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line["custom_id"],
            "response": response, "error": error}


def _validate(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input file's lines, or the errors that fail the batch (OpenAI validates the whole
    file before running any line)."""
    lines, errors, seen = [], [], set()
    for number, text in enumerate(data.decode().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            errors.append({"code": "invalid_json_line", "message": "not valid JSON",
                           "param": None, "line": number})
            continue
        problem = None
        if not isinstance(line.get("custom_id"), str) or line["custom_id"] in seen:
            problem = ("invalid_custom_id", "custom_id must be a string unique in the file")
        elif line.get("method") != "POST" or line.get("url") != endpoint:
            problem = ("mismatched_endpoint", f"method must be POST and url {endpoint}")
        elif not isinstance(line.get("body"), dict):
            problem = ("invalid_body", "body must be a JSON object")
        if problem:
            errors.append({"code": problem[0], "message": problem[1], "param": None,
                           "line": number})
        else:
            seen.add(line["custom_id"])
            lines.append(line)
    if not lines and not errors:
        errors.append({"code": "empty_file", "message": "the input file has no requests",
                       "param": None, "line": None})
    return lines, errors
