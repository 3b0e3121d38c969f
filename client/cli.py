"""``evalfleet``: the command line.

- ``evalfleet eval ...``: lm_eval-compatible flags. Without ``--coordinator`` it starts an embedded
  coordinator and one worker as real gRPC servers on loopback, runs the job and stops them.
- ``evalfleet serve worker|coordinator ...``: run one service until interrupted.
- ``evalfleet results ID``: a finished evaluation's results, from a coordinator or a store.
- ``evalfleet tasks list|show``: what can be evaluated.

User errors print one line to stderr and exit non-zero; no tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from rich.console import Console

from evalfleet.common.args import parse_kv_args
from evalfleet.common.errors import EvalfleetError
from evalfleet.common.logging import configure_logging

EXIT_USER_ERROR = 2


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on tasks (lm_eval-compatible flags)")
    p.add_argument("--model", "-M", default="hf", help="backend name (default: hf)")
    p.add_argument("--model_args", "-a", default="", help="k=v,k2=v2 or a JSON object")
    p.add_argument("--tasks", "-t", required=True, help="comma-separated tasks, groups or tags")
    p.add_argument("--num_fewshot", "-f", type=int, default=None)
    p.add_argument("--batch_size", "-b", default="1", help="integer, auto or auto:N")
    p.add_argument("--limit", "-L", type=float, default=None,
                   help="documents per task (a fraction when < 1.0)")
    p.add_argument("--samples", "-E", default=None, metavar="JSON",
                   help='document indices per task, e.g. \'{"arc_easy": [0, 5]}\', or a JSON '
                        "file of that; incompatible with --limit")
    p.add_argument("--output_path", "-o", default=None)
    p.add_argument("--log_samples", "-s", action="store_true")
    p.add_argument("--seed", default="0,1234,1234,1234",
                   help="one int for all four seeds, or python,numpy,torch,fewshot")
    p.add_argument("--gen_kwargs", default="", help="k=v,... merged into generation_kwargs")
    p.add_argument("--bootstrap_iters", type=int, default=100000)
    p.add_argument("--apply_chat_template", nargs="?", const=True, default=False,
                   metavar="TEMPLATE", help="render prompts with the model's chat template "
                   "(optionally the name of one of the tokenizer's templates)")
    p.add_argument("--fewshot_as_multiturn", nargs="?", const=True, default=None,
                   type=lambda x: x.lower() in ("true", "1", "yes"), metavar="BOOL",
                   help="few-shot examples as chat turns (default: on with "
                        "--apply_chat_template; 'false' disables)")
    p.add_argument("--system_instruction", default="")
    p.add_argument("--include_path", action="append", default=[])
    p.add_argument("--metadata", default="", help="k=v or JSON merged into task metadata")
    p.add_argument("--device", default=None, help="device for the embedded worker")
    p.add_argument("--confirm_run_unsafe_code", action="store_true")
    p.add_argument("--show_config", action="store_true", help="print the whole results JSON")
    p.add_argument("--data_dir", default=None,
                   help="local dataset mirror (default: $EVALFLEET_DATA_DIR)")
    p.add_argument("--coordinator", default=None,
                   help="host:port of a running coordinator (default: embedded services)")
    p.add_argument("--store", default=None, metavar="PATH|URL",
                   help="the embedded coordinator's store: a SQLite file, sqlite:///PATH, "
                        "postgresql://..., or :memory: to keep nothing (default: "
                        "$EVALFLEET_CACHE_DIR/store.db, ~/.cache/evalfleet/store.db); answers "
                        "are kept there, so an interrupted run resumes and a repeated one "
                        "computes nothing")
    p.add_argument("--no_progress", action="store_true", help="do not show progress bars")


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run one service").add_subparsers(dest="service",
                                                                          required=True)
    w = serve.add_parser("worker", help="an inference worker holding one model")
    w.add_argument("--backend", default="hf")
    w.add_argument("--model_args", default="")
    w.add_argument("--batch_size", default="1")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=50061)
    c = serve.add_parser("coordinator", help="the evaluation coordinator")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=50051)
    c.add_argument("--workers", default="", help="host:port[,host:port]")
    c.add_argument("--store", "--db", dest="store", default="evalfleet.db", metavar="PATH|URL",
                   help="job store: a SQLite file (default evalfleet.db), sqlite:///PATH, "
                        "or postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME shared by several "
                        "coordinators (--db is an alias)")
    c.add_argument("--data_dir", default=None)
    c.add_argument("--include_path", action="append", default=[])


def _add_results_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("results", help="print (and write) a finished evaluation's results")
    r.add_argument("id", help="the evaluation id")
    where = r.add_mutually_exclusive_group()
    where.add_argument("--coordinator", default=None, help="host:port of the coordinator")
    where.add_argument("--store", default=None, metavar="PATH|URL",
                       help="read the store directly (default: the embedded runs' store, "
                            "$EVALFLEET_CACHE_DIR/store.db)")
    r.add_argument("--output_path", "-o", default=None,
                   help="write results_<date>.json (and samples) as `eval` does")


def _add_tasks_parser(sub: argparse._SubParsersAction) -> None:
    tasks = sub.add_parser("tasks", help="list or show tasks").add_subparsers(dest="action",
                                                                             required=True)
    lst = tasks.add_parser("list", help="tasks, groups and tags, with their data")
    lst.add_argument("--include_path", action="append", default=[])
    lst.add_argument("--data_dir", default=None)
    show = tasks.add_parser("show", help="render a task's first document")
    show.add_argument("name")
    show.add_argument("--include_path", action="append", default=[])
    show.add_argument("--data_dir", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evalfleet", description=__doc__.splitlines()[0])
    parser.add_argument("--log_level", default=os.environ.get("EVALFLEET_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval_parser(sub)
    _add_serve_parser(sub)
    _add_results_parser(sub)
    _add_tasks_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json=args.command == "serve",
                      level="INFO" if args.command == "serve" else args.log_level)
    try:
        if args.command == "eval":
            from evalfleet.client.eval_command import run_eval

            return asyncio.run(run_eval(args))
        if args.command == "serve":
            return asyncio.run(_serve(args))
        if args.command == "results":
            from evalfleet.client.results_command import run_results

            return asyncio.run(run_results(args))
        return _tasks(args)
    except EvalfleetError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(args: argparse.Namespace) -> int:
    if args.service == "worker":
        from evalfleet.inference.server import load_backend, start_worker

        model_args = parse_kv_args(args.model_args, field="--model_args")
        backend = await asyncio.to_thread(load_backend, args.backend, model_args,
                                          _batch_size(args.batch_size))
        server = await start_worker(backend, host=args.host, port=args.port,
                                    model_args=model_args)
    else:
        from evalfleet.server.service import start_coordinator
        from evalfleet.server.store import open_store

        workers = [w.strip() for w in args.workers.split(",") if w.strip()]
        store = open_store(args.store)
        server, runner = await start_coordinator(
            host=args.host, port=args.port, workers=workers, store=store,
            data_dir=args.data_dir, include_paths=args.include_path)
        await runner.resume_pending()
    print(f"listening on {args.host}:{server.port}", flush=True)
    await _wait_for_signal()
    await server.stop()
    if args.service == "coordinator":
        await store.close()
    return 0


def _batch_size(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _tasks(args: argparse.Namespace) -> int:
    from evalfleet.tasks import TaskManager, render_task_listing, show_task

    manager = TaskManager(include_paths=args.include_path, data_dir=args.data_dir)
    console = Console()
    if args.action == "list":
        from rich.table import Table

        table = Table("name", "kind", "dataset", "data", "output_type")
        for row in render_task_listing(manager):
            dataset = "/".join(x for x in (row.get("dataset_path"), row.get("dataset_name")) if x)
            available = row.get("data_available")
            table.add_row(row["name"], row["kind"], dataset,
                          "" if available is None else ("yes" if available else "no"),
                          row.get("output_type") or "")
        console.print(table)
    else:
        print(show_task(manager, args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
