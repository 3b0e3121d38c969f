"""An evaluation's progress as the client shows it: documents done of total, with their rate and
the time left, one line per task or group asked for (a group's tasks folded into it) and an
overall line; a live bar on a terminal, and elsewhere (a CI log, a pipe) a plain line every few
seconds."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from evalfleet.v1 import coordinator_pb2 as cpb

#: Seconds between two plain progress lines (outside a terminal).
PLAIN_INTERVAL_S = 5.0
#: The rate is measured over this many seconds of the most recent progress.
RATE_WINDOW_S = 30.0
#: More lines than this (tasks asked for one by one) and only the overall line is shown.
MAX_LINES = 8
OVERALL = "total"
TERMINAL = {cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED,
            cpb.EVALUATION_STATE_CANCELLED}


def format_duration(seconds: float) -> str:
    """``0:23``, ``12:05``, ``1:02:03``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Meter:
    """Documents per second over the last ``RATE_WINDOW_S``, and the time left at that rate."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> None:
        if self.samples and self.samples[-1][1] == done:
            return
        self.samples.append((now, done))
        while len(self.samples) > 2 and self.samples[1][0] < now - RATE_WINDOW_S:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Documents per second; None until two different counts were seen."""
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def eta(self, remaining: int) -> float | None:
        rate = self.rate()
        return remaining / rate if rate else None


@dataclass
class Line:
    """One line of the display: a task, a group (its tasks folded), or the overall total."""

    name: str
    done: int = 0
    total: int = 0
    meter: Meter = field(default_factory=Meter)

    def status(self, state: int) -> str:
        """``12.3 docs/s, ETA 0:23``; what it waits for before a rate is known."""
        if self.total and self.done >= self.total:
            return "done" if state in TERMINAL or self.name != OVERALL else "scoring"
        if state == cpb.EVALUATION_STATE_QUEUED:
            return "queued"
        rate = self.meter.rate()
        if not rate:
            return "first batch computing" if not self.done else "measuring rate"
        eta = self.meter.eta(self.total - self.done)
        return f"{rate:.1f} docs/s, ETA {format_duration(eta or 0)}"


def usage_note(usage: cpb.TokenUsage | None) -> str:
    """``1,234 in (512 cached) / 56 out tokens, 0.0012 USD``: what the job spent so far; empty
    before any token was reported (local models' scoring, older coordinators)."""
    if usage is None or not (usage.prompt_tokens or usage.completion_tokens):
        return ""
    cached = f" ({usage.cached_tokens:,} cached)" if usage.cached_tokens else ""
    cost = f", {usage.cost:.4g} {usage.currency}" if usage.HasField("cost") else ""
    return (f"{usage.prompt_tokens:,} in{cached} / {usage.completion_tokens:,} out "
            f"tokens{cost}")


def fold(progress: Sequence[cpb.TaskProgress]) -> dict[str, tuple[int, int]]:
    """Documents (done, total) per task or group asked for, in the coordinator's order. A
    coordinator that does not report documents (before ``docs_total``) counts requests."""
    out: dict[str, tuple[int, int]] = {}
    for p in progress:
        key = p.group or p.task
        done, total = (p.docs_done, p.docs_total) if p.docs_total else (p.done, p.total)
        d, t = out.get(key, (0, 0))
        out[key] = (d + done, t + total)
    return out


class ProgressDisplay:
    """Shows an evaluation's progress events on ``console`` (a context manager)."""

    def __init__(self, console: Console, *, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 interval_s: float = PLAIN_INTERVAL_S) -> None:
        self.console = console
        self.enabled = enabled
        self.clock = clock
        self.interval_s = interval_s
        self.live = enabled and console.is_terminal and not console.is_dumb_terminal
        #: Plain lines (enabled, not a terminal).
        self.plain = enabled and not self.live
        self.started = clock()
        self.state = cpb.EVALUATION_STATE_QUEUED
        self.lines: dict[str, Line] = {}
        self.overall = Line(OVERALL)
        self.printed_at: float | None = None
        self._bars: dict[str, Any] = {}
        self._progress: Progress | None = None
        self._last_line = ""
        self.usage = ""  # usage_note of the latest event

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=24),
                TextColumn("{task.fields[count]}"), TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(), console=self.console, transient=False)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._render_live()
            self._progress.stop()
        elif self.enabled and exc[0] is None and self.lines:
            self._print(self.plain_line())

    def update(self, state: int, progress: Sequence[cpb.TaskProgress],
               usage: cpb.TokenUsage | None = None) -> None:
        """A progress event: update the lines (and the tokens spent so far, ``usage``), and
        show them (at most every few seconds when not on a terminal)."""
        if not self.enabled:
            return
        now = self.clock()
        self.state = state
        self.usage = usage_note(usage) or self.usage
        for name, (done, total) in fold(progress).items():
            line = self.lines.setdefault(name, Line(name))
            line.done, line.total = done, total
            line.meter.add(now, done)
        self.overall.done = sum(line.done for line in self.lines.values())
        self.overall.total = sum(line.total for line in self.lines.values())
        self.overall.meter.add(now, self.overall.done)
        if self._progress is not None:
            self._render_live()
        elif state not in TERMINAL:  # the last line is printed on leaving
            self.tick()

    def tick(self) -> None:
        """Print a plain line when ``interval_s`` passed since the last (the first at once)."""
        if not self.plain or not self.lines:
            return
        now = self.clock()
        if self.printed_at is None or now - self.printed_at >= self.interval_s:
            self.printed_at = now
            self._print(self.plain_line())

    def _print(self, line: str) -> None:
        if line != self._last_line:  # the same line again says nothing new
            self._last_line = line
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    async def heartbeat(self) -> None:
        """Plain lines keep coming while no event does (the first batch computing)."""
        while True:
            await asyncio.sleep(self.interval_s / 5)
            self.tick()

    def shown(self) -> list[Line]:
        """The lines on display: each task or group, then the total when there are several."""
        if len(self.lines) == 1:
            return list(self.lines.values())
        if len(self.lines) > MAX_LINES:
            return [self.overall]
        return [*self.lines.values(), self.overall]

    def plain_line(self) -> str:
        """``progress 0:12 120/400 docs (30%), 12.3 docs/s, ETA 0:23 | arc_easy 50/100 | ...``"""
        total = self.overall
        percent = f" ({100 * total.done // total.total}%)" if total.total else ""
        head = (f"progress {format_duration(self.clock() - self.started)} "
                f"{total.done}/{total.total} docs{percent}, {total.status(self.state)}"
                + (f", {self.usage}" if self.usage else ""))
        parts = [f"{line.name} {line.done}/{line.total}" for line in self.shown()
                 if line is not self.overall]
        if len(self.lines) > MAX_LINES:
            finished = sum(1 for line in self.lines.values() if line.done >= line.total)
            parts = [f"{finished}/{len(self.lines)} tasks done"]
        return " | ".join([head, *parts]) if len(self.lines) > 1 else head

    def _render_live(self) -> None:
        assert self._progress is not None
        shown = self.shown()
        for line in shown:
            count = f"{line.done}/{line.total} docs"
            if line.name not in self._bars:
                self._bars[line.name] = self._progress.add_task(
                    line.name, total=line.total or None, count=count,
                    status=line.status(self.state))
            self._progress.update(self._bars[line.name], completed=line.done,
                                  total=line.total or None, count=count,
                                  status=line.status(self.state))
        for name, bar in self._bars.items():  # a total shown alone hides the lines it replaced
            if all(line.name != name for line in shown):
                self._progress.update(bar, visible=False)
