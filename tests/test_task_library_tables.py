"""``--tasks list`` over lm-eval's task library: reporting/plain_markdown.py writes the tables
pytablewriter writes (lm-eval's own writer), in a fraction of its time."""

from __future__ import annotations

import time

from pytablewriter import MarkdownTableWriter

from evalfleet.reporting.plain_markdown import markdown_table
from evalfleet.tasks.manager import TaskManager


def _pytablewriter(headers: list[str], rows: list[list[str]]) -> str:
    table = MarkdownTableWriter()
    table.headers = headers
    table.value_matrix = rows
    return table.dumps()


def test_plain_tables_equal_pytablewriters(data_dir):
    from evalfleet.reporting.task_tables import _location

    entries = TaskManager(data_dir=data_dir).list()
    tasks = [[e.name, _location(e.yaml_path), e.output_type or ""]
             for e in entries if e.kind == "task"]
    sample = tasks[::100]  # ~130 rows of every kind of name, path and output type
    headers = ["Task", "Config Location", "Output Type"]
    assert markdown_table(headers, sample) == _pytablewriter(headers, sample)
    groups = [[e.name, _location(e.yaml_path)] for e in entries if e.kind == "group"][::20]
    assert markdown_table(["Group", "Config Location"], groups) == \
        _pytablewriter(["Group", "Config Location"], groups)
    # cells pytablewriter reads as numbers, keywords or escapes: its own output
    odd = [["123", "x"], ["1_000", "true"], ["a|b", "nan"], ["é", ""]]
    assert markdown_table(["A", "B"], odd) == _pytablewriter(["A", "B"], odd)
    started = time.perf_counter()
    markdown_table(headers, tasks)  # all ~13,000 rows: pytablewriter takes ~25 s
    assert time.perf_counter() - started < 2
