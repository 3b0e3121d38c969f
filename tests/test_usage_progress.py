"""The CLI's plain progress line shows the tokens the job spent so far (and their cost with a
price table), from the Watch events' usage; nothing while no token was reported."""

from __future__ import annotations

import io

from rich.console import Console

from evalfleet.client.progress import ProgressDisplay
from evalfleet.v1 import coordinator_pb2 as cpb

RUNNING = cpb.EVALUATION_STATE_RUNNING


def _progress(done: int) -> list[cpb.TaskProgress]:
    return [cpb.TaskProgress(task="gsm8k", done=done, total=4, docs_done=done, docs_total=4)]


def test_the_progress_line_shows_the_usage_so_far():
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    with ProgressDisplay(console, interval_s=0.0) as display:
        display.update(RUNNING, _progress(0), cpb.TokenUsage())
        display.update(RUNNING, _progress(2), cpb.TokenUsage(
            requests=2, prompt_tokens=1234, cached_tokens=512, completion_tokens=56))
        display.update(cpb.EVALUATION_STATE_SUCCEEDED, _progress(4), cpb.TokenUsage(
            requests=4, prompt_tokens=2500, completion_tokens=120, cost=0.00123,
            currency="USD"))
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("first batch computing")  # no tokens yet: nothing said
    assert lines[1].endswith(", 1,234 in (512 cached) / 56 out tokens")
    assert lines[-1].endswith(", done, 2,500 in / 120 out tokens, 0.00123 USD")
