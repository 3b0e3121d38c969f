"""``evalfleet results fetch ID`` (or ``results ID``): a finished evaluation's results, from a
coordinator or a store.

Prints lm-eval's table and, with ``--output_path``, writes the same files ``eval`` writes. The
store is read directly (no coordinator needed): by default the one embedded runs use, so the
results of a run whose files could not be written are one command away.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from evalfleet.client.submit import fetch_results, write_outputs
from evalfleet.common.errors import FailedPreconditionError, NotFoundError
from evalfleet.common.paths import default_store_path
from evalfleet.v1 import coordinator_pb2 as cpb


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


def run_results(args: argparse.Namespace) -> int:
    """Dispatch one ``results`` action; returns the exit code."""
    import asyncio

    return asyncio.run(fetch(args))


async def fetch(args: argparse.Namespace) -> int:
    """``results fetch ID``: print the table and, with --output_path, write the files."""
    console = Console(stderr=True)
    if args.coordinator:
        results, samples = await fetch_results(args.coordinator, args.id)
    else:
        results, samples = await read_stored_results(
            args.store or str(default_store_path()), args.id)
    print(results.table)
    if args.output_path:
        for path in write_outputs(args.output_path, results, samples):
            console.print(f"wrote {path}")
    return 0
