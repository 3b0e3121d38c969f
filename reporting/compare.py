"""Two runs side by side: per task and metric, both values, the difference and its significance.

Run A is the baseline, run B the candidate; differences are ``B - A``. A metric is compared
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

    def applies(self, row: MetricRow) -> bool:
        return row.metric == self.metric and (self.filter is None or row.filter == self.filter)


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


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _fmt_p(value: float | None) -> str:
    if value is None:
        return "N/A"
    return f"{value:.2e}" if value < 1e-4 else f"{value:.4f}"


def format_table(rows: Sequence[MetricRow], label_a: str, label_b: str) -> str:
    """The comparison as a markdown table."""
    from pytablewriter import MarkdownTableWriter
    from pytablewriter.typehint import String

    writer = MarkdownTableWriter()
    writer.headers = ["Task", "Metric", "Filter", "", f"A: {label_a}", f"B: {label_b}",
                      "B-A", "SE(B-A)", "p", "test", "n"]
    writer.type_hints = [String] * len(writer.headers)  # keep the formatting given here
    arrows = {True: "↑", False: "↓", None: ""}
    writer.value_matrix = [
        [r.task, r.metric, r.filter, arrows[r.higher_is_better], _fmt(r.a), _fmt(r.b),
         f"{r.test.diff:+.4f}", _fmt(r.test.se), _fmt_p(r.test.p_value), r.test.method,
         "" if r.test.n is None else str(r.test.n)]
        for r in rows]
    writer.margin = 0
    return writer.dumps()
