"""What the stand-ins' provider batch APIs share: running a batch's lines through the stand-in's
own online handler in a background thread, and the test controls.

Controls (the same on both stand-ins):

* ``--hold-batches``, or ``POST /control/batches {"hold": true}``: a new batch stays in progress
  (no line answered) until ``POST /control/batches/release`` (``{"expire": true}``: the held
  batches end expired instead, no line answered, as when the provider's 24 h window passes);
* ``--batch-error-first N``, or ``POST /control/batches {"error_first": N}``: the next N batch
  lines answered by this server fail with a server error (a later resend of them succeeds);
* ``POST /control/batches {"fail_next": N}`` (OpenAI only: Anthropic's batches never fail as a
  whole): the next N batches fail validation, none of their lines answered;
* ``GET /control/stats``: ``{"batch_submissions": batches created, "batches_held": held now,
  "lines_answered": lines answered successfully, "lines_failed": lines that failed}``.

Unless held, a batch is processed at once (its lines in order, one at a time), so tests wait
for milliseconds per line, not for the provider's hours.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from typing import Any


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The stand-ins' batch flags (``--hold-batches``, ``--batch-error-first``)."""
    parser.add_argument("--hold-batches", action="store_true",
                        help="keep batches in progress until POST /control/batches/release")
    parser.add_argument("--batch-error-first", type=int, default=0, metavar="N",
                        help="the first N batch lines answered fail with a server error")


class BatchRunner:
    """Batches of one stand-in: processing, holding, forced line errors and counters."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BatchRunner:
        """The runner of a stand-in started with :func:`add_batch_arguments`' flags."""
        return cls(args.hold_batches, args.batch_error_first)

    def __init__(self, hold: bool = False, error_first: int = 0) -> None:
        self.lock = threading.Condition()
        self.hold = hold
        self.error_first = error_first
        self.fail_next = 0
        self.submissions = 0
        self.answered = 0
        self.failed = 0
        self.held: dict[str, str | None] = {}  # batch id -> None (held), "process" or "expire"

    # ------------------------------------------------------------------ processing
    def start(self, batch_id: str, run: Callable[[Callable[[], bool]], None]) -> None:
        """Count a submission and run ``run(wait)`` in a thread; ``wait()`` returns at once
        unless the batch is held, else once it is released: True when it must end expired."""
        with self.lock:
            self.submissions += 1
            held = self.hold
            if held:
                self.held[batch_id] = None

        def wait() -> bool:
            if not held:
                return False
            with self.lock:
                self.lock.wait_for(lambda: self.held.get(batch_id) is not None)
                return self.held.pop(batch_id) == "expire"

        threading.Thread(target=run, args=(wait,), daemon=True).start()

    def wake(self, batch_id: str) -> None:
        """End the hold of ``batch_id`` (cancelled): it runs now, answering nothing."""
        with self.lock:
            if batch_id in self.held:
                self.held[batch_id] = "process"
                self.lock.notify_all()

    def forced_failure(self) -> bool:
        """Whether the batch being validated must fail as a whole (``fail_next``)."""
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return False

    def forced_error(self) -> bool:
        """Whether the next line must fail (``error_first``); counts it."""
        with self.lock:
            if self.error_first > 0:
                self.error_first -= 1
                self.failed += 1
                return True
            return False

    def count(self, ok: bool) -> None:
        """Count one line answered (``ok``) or failed."""
        with self.lock:
            if ok:
                self.answered += 1
            else:
                self.failed += 1

    # ------------------------------------------------------------------ controls
    def control(self, handler: Any, method: str, path: str) -> bool:
        """Answer a ``/control/...`` request; False when ``path`` is not one."""
        if method == "GET" and path == "/control/stats":
            with self.lock:
                stats = {"batch_submissions": self.submissions, "batches_held": len(
                    [b for b, v in self.held.items() if v is None]),
                    "lines_answered": self.answered, "lines_failed": self.failed}
            send_json(handler, 200, stats)
            return True
        if method != "POST" or path not in ("/control/batches", "/control/batches/release"):
            return False
        body = read_json(handler) or {}
        with self.lock:
            if path == "/control/batches":
                self.hold = bool(body.get("hold", self.hold))
                self.error_first = int(body.get("error_first", self.error_first))
                self.fail_next = int(body.get("fail_next", self.fail_next))
                answer = {"hold": self.hold, "error_first": self.error_first,
                          "fail_next": self.fail_next}
            else:
                outcome = "expire" if body.get("expire") else "process"
                released = [b for b, v in self.held.items() if v is None]
                for batch_id in released:
                    self.held[batch_id] = outcome
                self.lock.notify_all()
                answer = {"released": released, "outcome": outcome}
        send_json(handler, 200, answer)
        return True


def newest_first_page(objects: list[dict[str, Any]], limit: int, after: str | None
                      ) -> tuple[list[dict[str, Any]], bool]:
    """One page of ``objects`` (oldest first) listed newest first after the id ``after``, and
    whether more follow."""
    newest = list(reversed(objects))
    if after is not None:
        ids = [o["id"] for o in newest]
        newest = newest[ids.index(after) + 1:] if after in ids else []
    return newest[:limit], len(newest) > limit


def read_json(handler: Any) -> Any:
    """The request's JSON body (None when empty); ValueError when it is not JSON."""
    length = int(handler.headers.get("Content-Length") or 0)
    raw = handler.rfile.read(length) if length else b""
    return json.loads(raw) if raw else None


def send_json(handler: Any, status: int, payload: Any) -> None:
    """Answer ``payload`` as JSON."""
    send_bytes(handler, status, json.dumps(payload).encode(), "application/json")


def send_bytes(handler: Any, status: int, data: bytes, content_type: str) -> None:
    """Answer ``data`` with ``content_type``."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
