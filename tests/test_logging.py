"""Service logging survives its stderr being swapped and closed."""

from __future__ import annotations

import io
import sys

from evalfleet.common.logging import configure_logging, get_logger


def test_logging_writes_to_the_current_stderr_not_a_closed_one(monkeypatch):
    """configure_logging under one stderr, that stream closed and replaced (as pytest's capture
    and embedding applications do): a later log line goes to the new stream, never raises."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(json=True)
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)

    get_logger("test").warning("after_swap", n=1)

    assert '"event": "after_swap"' in second.getvalue()


def test_standard_library_records_are_rendered_like_structlog_ones(monkeypatch):
    """A library's stdlib record (grpc, datasets) in a service is a JSON line with its logger's
    name, like the service's own lines, not ``WARNING:grpc:...``."""
    import json
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(json=True, level="INFO")
    configure_logging(json=True, level="INFO")  # configured twice: still one handler

    logging.getLogger("grpc._server").warning("peer %s went away", "x")
    get_logger("test").warning("own_event")

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [("peer x went away", "warning"),
                                                          ("own_event", "warning")]
    assert lines[0]["logger"] == "grpc._server" and "timestamp" in lines[0]
    assert len(root.handlers) == 1
