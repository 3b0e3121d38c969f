"""The progress display: documents with rate and ETA, a group's tasks folded into one line, an
overall line, and plain lines every few seconds outside a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from evalfleet.client.progress import MAX_LINES, ProgressDisplay, fold
from evalfleet.v1 import coordinator_pb2 as cpb

RUNNING = cpb.EVALUATION_STATE_RUNNING


def _mmlu(done_docs: int) -> list[cpb.TaskProgress]:
    """57 mmlu subtasks of 10 documents (40 requests) each; ``done_docs`` done in each."""
    return [cpb.TaskProgress(task=f"mmlu_subject_{i:02d}", done=4 * done_docs, total=40,
                             docs_done=done_docs, docs_total=10, group="mmlu")
            for i in range(57)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fold_counts_documents_per_group_asked_for():
    progress = [*_mmlu(3), cpb.TaskProgress(task="arc_easy", done=8, total=20, docs_done=2,
                                             docs_total=5)]
    assert fold(progress) == {"mmlu": (171, 570), "arc_easy": (2, 5)}
    # A coordinator that does not report documents: requests are counted.
    assert fold([cpb.TaskProgress(task="piqa", done=3, total=8)]) == {"piqa": (3, 8)}


def test_plain_lines_every_few_seconds_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, width=80, force_terminal=False)
    with ProgressDisplay(console, clock=clock, interval_s=5.0) as display:
        display.update(RUNNING, _mmlu(0))  # printed at once: the run has started
        for second, docs in ((1, 1), (2, 2), (4, 4)):  # within 5 s of it: not printed
            clock.now = 100.0 + second
            display.update(RUNNING, _mmlu(docs))
        clock.now = 106.0
        display.tick()  # no event for 2 s: the heartbeat prints anyway
        clock.now = 108.0
        display.update(cpb.EVALUATION_STATE_SUCCEEDED, _mmlu(10))
    lines = out.getvalue().splitlines()
    assert lines == [
        "progress 0:00 0/570 docs (0%), first batch computing",
        "progress 0:06 228/570 docs (40%), 57.0 docs/s, ETA 0:06",
        "progress 0:08 570/570 docs (100%), done",
    ]


def test_a_terminal_shows_one_bar_per_group_and_fits_80_columns():
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    progress = [*_mmlu(4), cpb.TaskProgress(task="arc_easy", done=8, total=20, docs_done=2,
                                             docs_total=5)]
    clock = Clock()
    with ProgressDisplay(console, clock=clock) as display:
        display.update(RUNNING, progress)
        clock.now += 2
        display.update(RUNNING, [*_mmlu(6), *progress[57:]])
    text = out.getvalue()
    final = text[text.rindex("mmlu"):]
    assert "mmlu_subject" not in text
    assert "342/570 docs" in final and "2/5 docs" in final and "344/575 docs" in final
    assert "docs/s, ETA" in final
    assert all(len(line) <= 80 for line in final.splitlines())


def test_more_tasks_than_fit_show_the_total_alone():
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    tasks = [cpb.TaskProgress(task=f"t{i}", done=1, total=1, docs_done=1, docs_total=1)
             for i in range(MAX_LINES + 1)]
    with ProgressDisplay(console) as display:
        display.update(cpb.EVALUATION_STATE_SUCCEEDED, tasks)
    line = out.getvalue().strip()
    assert line.endswith(f"9/9 docs (100%), done | {MAX_LINES + 1}/{MAX_LINES + 1} tasks done")
