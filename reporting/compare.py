"""Two runs side by side: per task and metric, both values, the difference and its significance.

Run A is the baseline, run B the candidate; differences are ``B - A``. A task, or a metric of a
shared task, that only one run has is listed as missing (:func:`missing_entries`), never dropped
silently: a gate fails on it (:func:`gate_misses`). A metric is compared
per document (see :mod:`.stats`) when both runs logged samples of the same documents (same
``doc_id`` and ``doc_hash``) and the reported value is the mean of the per-document values;
otherwise from the two reported standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.reporting.runs import Run
from evalfleet.reporting.stats import TestResult, paired_test, unpaired_test

MetricKey = tuple[str, str, str]  # (task or group, metric, filter)


@dataclass
class MetricRow:
    """One task/metric/filter in both runs."""

    task: str
    metric: str
    filter: str
    a: float
    b: float
    higher_is_better: bool | None
    test: TestResult

    @property
    def worse_by(self) -> float:
        """How much worse B is than A (positive: a regression), in the metric's direction."""
        return self.a - self.b if self.higher_is_better is not False else self.b - self.a

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "test"}
        out.update(asdict(self.test))
        return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def metric_values(results: dict[str, Any]) -> dict[MetricKey, tuple[float, float | None]]:
    """``(task, metric, filter) -> (value, stderr)`` for every numeric metric of a results doc."""
    out: dict[MetricKey, tuple[float, float | None]] = {}
    for task, entry in results.get("results", {}).items():
        for key, value in entry.items():
            metric, sep, filter_name = key.partition(",")
            number = _number(value)
            if not sep or metric.endswith("_stderr") or number is None:
                continue
            out[(task, metric, filter_name)] = (
                number, _number(entry.get(f"{metric}_stderr,{filter_name}")))
    return out


def _higher_is_better(results: dict[str, Any], task: str, metric: str) -> bool | None:
    value = results.get("higher_is_better", {}).get(task, {}).get(metric)
    return value if isinstance(value, bool) else None


def _per_document(records: Sequence[dict[str, Any]], metric: str, filter_name: str
                  ) -> dict[int, tuple[str, float]] | None:
    """``doc_id -> (doc_hash, value)``, or None when a value is not a plain number."""
    out: dict[int, tuple[str, float]] = {}
    for record in records:
        if record.get("filter", "none") != filter_name or metric not in record:
            continue
        value = _number(record[metric])
        if value is None and isinstance(record[metric], bool):
            value = float(record[metric])
        if value is None:
            return None
        out[int(record["doc_id"])] = (str(record.get("doc_hash", "")), value)
    return out


def paired_arrays(a: Run, b: Run, task: str, metric: str, filter_name: str,
                  value_a: float, value_b: float) -> tuple[list[float], list[float]] | None:
    """Per-document values of both runs in doc order, when a paired test is valid."""
    if task not in a.samples or task not in b.samples:
        return None
    docs_a = _per_document(a.samples[task], metric, filter_name)
    docs_b = _per_document(b.samples[task], metric, filter_name)
    if not docs_a or not docs_b or docs_a.keys() != docs_b.keys():
        return None
    if any(docs_a[d][0] != docs_b[d][0] for d in docs_a):
        return None  # different documents under the same ids
    order = sorted(docs_a)
    va = [docs_a[d][1] for d in order]
    vb = [docs_b[d][1] for d in order]
    for values, reported in ((va, value_a), (vb, value_b)):
        if abs(sum(values) / len(values) - reported) > 1e-6 * max(1.0, abs(reported)):
            return None  # the aggregate is not the per-document mean (f1, perplexity, ...)
    return va, vb


@dataclass(frozen=True)
class Missing:
    """A task (``metric`` None) or a shared task's metric that only one run has."""

    task: str
    metric: str | None
    filter: str | None
    only_in: str  # "A" or "B"

    def name(self) -> str:
        """``task`` or ``task metric,filter``."""
        return self.task if self.metric is None else f"{self.task} {self.metric},{self.filter}"


def missing_entries(a: Run, b: Run) -> list[Missing]:
    """Tasks in one run only, then metrics in one run only of the tasks both have."""
    values = {"A": metric_values(a.results), "B": metric_values(b.results)}
    tasks = {"A": a.task_names(), "B": b.task_names()}
    out = [Missing(task, None, None, side) for side, other in (("A", "B"), ("B", "A"))
           for task in tasks[side] if task not in tasks[other]]
    for side, other in (("A", "B"), ("B", "A")):
        out.extend(Missing(task, metric, filter_name, side)
                   for task, metric, filter_name in values[side]
                   if task in tasks[other] and (task, metric, filter_name) not in values[other])
    return out


def compare_runs(a: Run, b: Run) -> list[MetricRow]:
    """Every task/metric/filter present in both runs, in run A's order."""
    values_a, values_b = metric_values(a.results), metric_values(b.results)
    rows = []
    for key, (va, se_a) in values_a.items():
        if key not in values_b:
            continue
        vb, se_b = values_b[key]
        task, metric, filter_name = key
        paired = paired_arrays(a, b, task, metric, filter_name, va, vb)
        test = paired_test(*paired) if paired else unpaired_test(va, se_a, vb, se_b)
        hib = _higher_is_better(a.results, task, metric)
        if hib is None:
            hib = _higher_is_better(b.results, task, metric)
        rows.append(MetricRow(task, metric, filter_name, va, vb, hib, test))
    return rows


@dataclass(frozen=True)
class Threshold:
    """``--fail-if-worse METRIC[,FILTER]=DELTA``."""

    metric: str
    filter: str | None
    delta: float

    def matches(self, metric: str, filter_name: str | None) -> bool:
        """Whether this threshold gates ``metric,filter_name``."""
        return metric == self.metric and (self.filter is None or filter_name == self.filter)

    def applies(self, row: MetricRow) -> bool:
        return self.matches(row.metric, row.filter)


def parse_thresholds(texts: Iterable[str]) -> list[Threshold]:
    """Parse ``acc=0.01`` or ``exact_match,strict-match=0`` (DELTA >= 0, in metric units)."""
    out = []
    for text in texts:
        name, sep, delta = text.partition("=")
        metric, _, filter_name = name.strip().partition(",")
        try:
            value = float(delta)
        except ValueError:
            value = -1.0
        if not sep or not metric or value < 0 or not math.isfinite(value):
            raise InvalidArgumentError(
                f"--fail-if-worse: '{text}' is not METRIC=DELTA (e.g. acc=0.01: fail when acc "
                "drops by more than 0.01 and the drop is significant)")
        out.append(Threshold(metric, filter_name or None, value))
    return out


def regressions(rows: Sequence[MetricRow], thresholds: Sequence[Threshold],
                alpha: float) -> list[MetricRow]:
    """Rows where B is worse than A by more than a threshold's delta, with p < alpha."""
    return [row for row in rows
            if any(t.applies(row) for t in thresholds)
            and row.worse_by > max(t.delta for t in thresholds if t.applies(row))
            and row.test.p_value is not None and row.test.p_value < alpha]


def gate_misses(missing: Sequence[Missing], thresholds: Sequence[Threshold]) -> list[Missing]:
    """What a ``--fail-if-worse`` gate fails on besides regressions: every task only one run
    has, and every gated metric only one run has (none when there are no thresholds)."""
    if not thresholds:
        return []
    return [m for m in missing if m.metric is None
            or any(t.matches(m.metric, m.filter) for t in thresholds)]


def format_missing(missing: Sequence[Missing]) -> str:
    """One line per missing task or metric, saying which run (A or B) has it."""
    return "\n".join(
        f"{'task' if m.metric is None else 'metric'} {m.name()}: only in {m.only_in}, "
        f"missing from {'B' if m.only_in == 'A' else 'A'}" for m in missing)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _fmt_p(value: float | None) -> str:
    if value is None:
        return "N/A"
    return f"{value:.2e}" if value < 1e-4 else f"{value:.4f}"


#: Columns ``format_table`` leaves out first when a terminal is too narrow for all of them.
_OPTIONAL_COLUMNS = ("test", "n", "SE(B-A)")


def _cells(row: MetricRow) -> dict[str, str]:
    arrows = {True: "↑", False: "↓", None: ""}
    return {"Task": row.task, "Metric": row.metric, "Filter": row.filter,
            "": arrows[row.higher_is_better], "A": _fmt(row.a), "B": _fmt(row.b),
            "B-A": f"{row.test.diff:+.4f}", "SE(B-A)": _fmt(row.test.se),
            "p": _fmt_p(row.test.p_value), "test": row.test.method,
            "n": "" if row.test.n is None else str(row.test.n)}


def _markdown(headers: Sequence[str], matrix: Sequence[Sequence[str]]) -> str:
    from pytablewriter import MarkdownTableWriter
    from pytablewriter.typehint import String

    writer = MarkdownTableWriter()
    writer.headers = list(headers)
    writer.type_hints = [String] * len(headers)  # keep the formatting given here
    writer.value_matrix = [list(r) for r in matrix]
    writer.margin = 0
    return writer.dumps()


def _records(rows: Sequence[MetricRow]) -> str:
    """One block per row: its whole name on a line, its numbers on the next."""
    lines = []
    for row in rows:
        c = _cells(row)
        lines.append(f"{row.task}  {row.metric},{row.filter} {c['']}".rstrip())
        numbers = f"  A {c['A']}  B {c['B']}  B-A {c['B-A']}  p {c['p']}"
        lines.append(numbers + (f"  SE {c['SE(B-A)']}" if c["SE(B-A)"] else ""))
    return "\n".join(lines)


def _widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def format_table(rows: Sequence[MetricRow], label_a: str, label_b: str,
                 width: int | None = None) -> str:
    """The comparison as a markdown table, every column and cell whole.

    With ``width`` (a terminal's columns) a table wider than that drops the run labels from
    its headers, then the optional columns (test, n, stderr), and when even that does not fit
    prints one block per row: names are never cut.
    """
    keys = ["Task", "Metric", "Filter", "", "A", "B", "B-A", "SE(B-A)", "p", "test", "n"]
    headers = {"A": f"A: {label_a}", "B": f"B: {label_b}"}
    matrix = [_cells(r) for r in rows]
    table = _markdown([headers.get(k, k) for k in keys], [[c[k] for k in keys] for c in matrix])
    if width is None or _widest(table) <= width:
        return table
    for drop in range(len(_OPTIONAL_COLUMNS) + 1):
        shown = [k for k in keys if k not in _OPTIONAL_COLUMNS[:drop]]
        table = _markdown(shown, [[c[k] for k in shown] for c in matrix])
        if _widest(table) <= width:
            return table
    return _records(rows)
