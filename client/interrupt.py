"""Ctrl-C for a command that runs on an event loop: the first stops it cleanly, the second quits.

The first SIGINT cancels the command's task, so its clean-up runs (``evalfleet eval``: the job
is stopped, its worker ends the batch in flight early and every answer computed is stored); the
command then reports what it kept and exits 130. A second SIGINT (the user will not wait for
the clean-up) ends the process at once, exit 130, after the ``on_quit`` callbacks (they kill
the child processes the command started, which a terminal's Ctrl-C does not reach).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

#: The exit code of a command ended by Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130


class CtrlC:
    """Within ``with CtrlC() as ctrl_c:`` (in the command's task, on the main thread), SIGINT
    cancels that task once, then quits the process. ``message``: the line the command prints
    once stopped (its clean-up may make it say what was kept)."""

    def __init__(self) -> None:
        self.count = 0
        self.message = "interrupted"
        self._quit: list[Callable[[], None]] = []
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: object = None
        self._installed = False

    @property
    def interrupted(self) -> bool:
        """A Ctrl-C arrived."""
        return self.count > 0

    def on_quit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (no await, no wait) before a second Ctrl-C ends the process."""
        self._quit.append(callback)

    def __enter__(self) -> CtrlC:
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        # Signal handlers belong to the main thread (a command run from a test's thread keeps
        # the interpreter's KeyboardInterrupt); an ignored SIGINT (a shell's background job,
        # nohup) stays ignored.
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self._installed = False

    def stopped(self) -> bool:
        """After the command's task caught its ``CancelledError``: True (the cancel undone)
        when it came from a Ctrl-C, so the command reports and exits 130; False otherwise."""
        if not self.interrupted:
            return False
        if self._task is not None:
            self._task.uncancel()
        return True

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            assert self._loop is not None and self._task is not None
            self._loop.call_soon_threadsafe(self._task.cancel)
            return
        print("interrupted again: quitting now (the answers stored so far are kept)",
              file=sys.stderr, flush=True)
        for callback in self._quit:
            with contextlib.suppress(Exception):
                callback()
        os._exit(EXIT_INTERRUPTED)
