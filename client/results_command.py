"""``evalfleet results show|compare|plot|report``: work with results files after a run.

- ``show PATH``: lm-eval's table (header line, tasks, groups) of a run.
- ``compare A B``: per task and metric both values, ``B - A``, its standard error and a p-value
  (paired per document when both runs logged the same documents), and every task or metric only
  one run has; ``--fail-if-worse METRIC=DELTA`` exits 1 when B is worse than A by more than
  DELTA with p < ``--alpha``, and when a task (or a gated metric) is missing from either run
  (``--allow-missing`` relaxes that to a listing).
- ``plot PATH... --out chart.png``: metrics per task for several runs, values labelled, ± 1
  stderr bars, a hatched "missing" slot where a run lacks a task.
- ``report PATH --out report.html``: one self-contained HTML file to browse the documents.
- ``fetch ID`` (or just ``results ID``): a finished evaluation's results from a coordinator or a
  store, its table printed and, with ``--output_path``, the files ``eval`` writes written (the
  store is read directly, by default the one embedded runs use, so the results of a run whose
  files could not be written are one command away).

PATH is a results file, an ``--output_path`` folder, or the ``.json`` path given to ``eval``.
Of several results files the newest is taken, and the command says so; ``compare``, ``plot`` and
``report`` refuse a folder whose results files differ in tasks unless ``--newest`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evalfleet.client.results_terminal import path_line, terminal_width
from evalfleet.client.submit import fetch_results, write_outputs
from evalfleet.common.errors import FailedPreconditionError, NotFoundError
from evalfleet.common.paths import default_store_path
from evalfleet.reporting.runs import Run, load_run, unique_labels
from evalfleet.v1 import coordinator_pb2 as cpb

EXIT_REGRESSION = 1


def run_results(args: argparse.Namespace) -> int:
    """Dispatch one ``results`` action; returns the exit code."""
    if args.action == "show":
        return _show(args)
    if args.action == "compare":
        return _compare(args)
    if args.action == "plot":
        return _plot(args)
    if args.action == "fetch":
        import asyncio

        return asyncio.run(fetch(args))
    return _report(args)


def _notes(runs: list[Run]) -> None:
    """Say on stderr which results file was taken where a path held several."""
    for run in runs:
        if run.note:
            print(f"note: {run.note}", file=sys.stderr)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _show(args: argparse.Namespace) -> int:
    from evalfleet.server.results import full_table

    run = load_run(args.path, with_samples=False)
    _notes([run])
    print(f"{run.path}")
    print(full_table(run.results))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from evalfleet.reporting.compare import (
        compare_runs,
        format_missing,
        format_table,
        gate_misses,
        metric_values,
        missing_entries,
        parse_thresholds,
        regressions,
    )

    thresholds = parse_thresholds(args.fail_if_worse)
    a = load_run(args.baseline, strict=not args.newest)
    b = load_run(args.candidate, strict=not args.newest)
    _notes([a, b])
    unique_labels([a, b])
    rows = compare_runs(a, b)
    if not rows:
        print(f"error: {a.path} and {b.path} share no task and metric (A has "
              f"{', '.join(a.task_names()) or 'none'}; B has "
              f"{', '.join(b.task_names()) or 'none'})", file=sys.stderr)
        return 2
    missing = missing_entries(a, b)
    width = terminal_width(sys.stdout)
    for side, run in (("A", a), ("B", b)):
        print(path_line(f"{side}: {run.label} ", f"({run.path})", width))
    print(format_table(rows, a.label, b.label, width).rstrip())
    if missing:
        entries = "entry" if len(missing) == 1 else "entries"
        print(f"\nIn one run only ({len(missing)} {entries}, not compared):")
        print(format_missing(missing))
    sys.stdout.flush()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"a": str(a.path), "b": str(b.path), "rows": [r.as_dict() for r in rows],
             "missing": [vars(m) for m in missing]}, indent=2), encoding="utf-8")
    known = {(m, f) for values in (metric_values(a.results), metric_values(b.results))
             for _, m, f in values}
    unmatched = [t for t in thresholds if not any(t.matches(m, f) for m, f in known)]
    for threshold in unmatched:
        print(f"error: --fail-if-worse {threshold.metric}: no such metric in either run",
              file=sys.stderr)
    if unmatched:
        return 2
    worse = regressions(rows, thresholds, args.alpha)
    for row in worse:
        print(f"REGRESSION {row.task} {row.metric},{row.filter}: {row.a:.4f} -> {row.b:.4f} "
              f"({row.test.diff:+.4f}, p={row.test.p_value:.3g}, {row.test.method})",
              file=sys.stderr)
    misses = gate_misses(missing, thresholds)
    for miss in misses:
        other = "B" if miss.only_in == "A" else "A"
        print(f"{'missing (allowed)' if args.allow_missing else 'MISSING'} {miss.name()}: in "
              f"{miss.only_in} only, not in {other}", file=sys.stderr)
    failed_misses = [] if args.allow_missing else misses
    if failed_misses:
        print(f"gate failed: {_plural(len(failed_misses), 'task or gated metric')} in one "
              "run only (--allow-missing to gate the rest)", file=sys.stderr)
    elif thresholds and not worse:
        print("no significant regression", file=sys.stderr)
    return EXIT_REGRESSION if worse or failed_misses else 0


def _plot(args: argparse.Namespace) -> int:
    from evalfleet.reporting.plot import plot_runs

    runs = [load_run(p, with_samples=False, strict=not args.newest) for p in args.paths]
    _notes(runs)
    unique_labels(runs)
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    out = plot_runs(runs, args.out, metrics=metrics, title=args.title)
    print(path_line("wrote", out, terminal_width(sys.stdout)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from evalfleet.reporting.report import write_report

    run = load_run(args.path, strict=not args.newest)
    _notes([run])
    out = write_report(run, args.out, title=args.title)
    tasks = run.leaf_tasks()
    logged = [t for t in tasks if t in run.samples]
    documents = sum(len(run.samples[t]) for t in logged)
    if not logged:
        summary = (f" ({_plural(len(tasks), 'task')}, no documents: no samples files beside "
                   f"{run.path.name}; run eval with --log_samples to browse them)")
    elif len(logged) == len(tasks):
        summary = f" ({_plural(len(tasks), 'task')}, {_plural(documents, 'document')})"
    else:
        summary = (f" ({_plural(len(tasks), 'task')}, {len(logged)} with samples: "
                   f"{_plural(documents, 'document')})")
    print(path_line("wrote", out, terminal_width(sys.stdout), summary))
    return 0


async def read_stored_results(store_url: str, evaluation_id: str
                              ) -> tuple[cpb.EvaluationResults, list[cpb.SampleRecord]]:
    """The results and samples of a SUCCEEDED evaluation, read from the store itself."""
    from evalfleet.server.store import SqliteJobStore, open_store

    store = open_store(store_url, flag="--store")
    if isinstance(store, SqliteJobStore) and store.path != ":memory:" \
            and not Path(store.path).is_file():
        raise NotFoundError(f"--store: no store at {store.path}")
    async with store:
        record = await store.get_job(evaluation_id)
        if record is None:
            raise NotFoundError(f"evaluation '{evaluation_id}' not found in store "
                                f"{store.address}")
        if record.state != cpb.EVALUATION_STATE_SUCCEEDED or record.results is None:
            state = cpb.EvaluationState.Name(record.state).removeprefix("EVALUATION_STATE_")
            detail = f": {record.error}" if record.error else ""
            raise FailedPreconditionError(
                f"evaluation '{evaluation_id}' has no results ({state.lower()}{detail})")
        samples = [cpb.SampleRecord(task=task, json=line)
                   async for task, line in store.iter_samples(evaluation_id)]
        return cpb.EvaluationResults.FromString(record.results), samples


async def fetch(args: argparse.Namespace) -> int:
    """``results fetch ID``: print the table and, with --output_path, write the files."""
    if args.coordinator:
        results, samples = await fetch_results(args.coordinator, args.id)
    else:
        results, samples = await read_stored_results(
            args.store or str(default_store_path()), args.id)
    print(results.table)
    if args.output_path:
        width = terminal_width(sys.stderr)
        for path in write_outputs(args.output_path, results, samples):
            print(path_line("wrote", path, width), file=sys.stderr)
    return 0
