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
