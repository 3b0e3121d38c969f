"""``evalfleet``: the command line.

- ``evalfleet eval ...``: lm_eval-compatible flags. Without ``--coordinator`` it starts an embedded
  coordinator and one worker as real gRPC servers on loopback, runs the job and stops them.
- ``evalfleet serve worker|coordinator ...``: run one service until interrupted.
- ``evalfleet results ID``: a finished evaluation's results, from a coordinator or a store.
- ``evalfleet tasks list|show``: what can be evaluated.
- ``evalfleet results show|compare|plot|report``: read, compare, chart and browse results files.
- ``evalfleet gate --policy gate.yaml A B``: a release gate (exit 0 GO, 1 NO-GO, 3 INCONCLUSIVE).
- ``evalfleet warmup``: compile the Numba kernels into the cache ahead of the first evaluation.

User errors print one line to stderr and exit non-zero; no tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from evalfleet.client.connect import add_client_security_flags
from evalfleet.client.gate_command import add_gate_parser
from evalfleet.client.serve import (
    add_coordinator_flags,
    add_worker_flags,
    coordinator_options,
    registration,
    served_metrics,
    worker_security,
)
from evalfleet.common import lifecycle
from evalfleet.common.args import parse_kv_args
from evalfleet.common.errors import EvalfleetError
from evalfleet.common.logging import configure_logging
from evalfleet.tasks.errors import TaskError, TaskNotFoundError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with an unknown flag reported by the subcommand it was given to: that
    command's usage, and the closest flag it takes (``--limt``: did you mean ``--limit``?)."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = chosen_parser(self, namespace)
            parser.error(unrecognized_message(parser, extras))
        return namespace


def chosen_parser(parser: argparse.ArgumentParser, namespace: argparse.Namespace
                  ) -> argparse.ArgumentParser:
    """The innermost subcommand's parser that ``namespace`` was parsed with."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(namespace, action.dest, None)
            if name in action.choices:
                return chosen_parser(action.choices[name], namespace)
    return parser


def unrecognized_message(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """``unrecognized arguments: --limt 5; did you mean --limit?`` (a flag spelled with
    dashes for underscores gets its lm_eval spelling)."""
    import difflib

    flags = [f for a in parser._actions for f in a.option_strings
             if f.startswith("--") and a.help != argparse.SUPPRESS]
    hints = []
    for token in extras:
        typed = token.split("=", 1)[0]
        if not typed.startswith("--"):
            continue
        spelled = "--" + typed[2:].replace("-", "_")
        match = difflib.get_close_matches(spelled, flags, n=1, cutoff=0.6)
        if match:
            hints.append(f"{typed}: did you mean {match[0]}?")
    message = f"unrecognized arguments: {' '.join(extras)}"
    if len(hints) == 1:
        hints = [hints[0].split(": ", 1)[1]]
    return "; ".join([message, *hints])


class _Version(argparse.Action):
    """``--version``: the installed package's version (read only when asked for)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print evalfleet's version and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version

        print(f"evalfleet {version('evalfleet')}")
        parser.exit()


class _JoinValues(argparse.Action):
    """lm-eval's ``nargs="+"`` flags: ``--tasks a b`` or ``--model_args k=v k2=v2``, repeatable;
    the pieces are joined with commas (a single JSON object is kept as is)."""

    def __call__(self, parser, namespace, values, option_string=None):
        pieces = [v for v in (values or []) if v.strip()]
        given = namespace.__dict__.setdefault("_given_on_command_line", set())
        # The first occurrence replaces the default (or a --config value); later ones merge.
        previous = getattr(namespace, self.dest, None) if self.dest in given else None
        given.add(self.dest)
        joined = ",".join([*([previous] if previous else []), *pieces])
        setattr(namespace, self.dest, joined)


def _log_level_flag(parser: argparse.ArgumentParser) -> None:
    """``--log_level`` is accepted before and after the subcommand."""
    parser.add_argument("--log_level", default=argparse.SUPPRESS,
                        help="DEBUG, INFO, WARNING (default), ERROR")


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on tasks (lm_eval-compatible flags)",
                       description="lm_eval's flags with lm-eval's meaning; see the flag parity "
                                   "table in the README.")
    _log_level_flag(p)
    p.add_argument("--config", "-C", default=None, metavar="<path>",
                   help="YAML file of flag values (lm-eval's --config); flags given override it")
    p.add_argument("--model", "-M", default="hf", help="backend name (default: hf)")
    p.add_argument("--model_args", "-a", default="", nargs="+", action=_JoinValues,
                   help="k=v,k2=v2 (or k=v k2=v2) or a JSON object")
    p.add_argument("--tasks", "-t", default=None, nargs="+", action=_JoinValues,
                   help="tasks, groups or tags (comma or space separated); 'list', "
                        "'list_groups', 'list_tags' or 'list_subtasks' print them")
    p.add_argument("--num_fewshot", "-f", type=int, default=None)
    p.add_argument("--batch_size", "-b", default="1", help="integer, auto or auto:N")
    p.add_argument("--max_batch_size", type=int, default=None, metavar="<n>",
                   help="largest batch --batch_size auto may pick (embedded worker)")
    p.add_argument("--limit", "-L", type=float, default=None,
                   help="documents per task (a fraction when < 1.0)")
    p.add_argument("--samples", "-E", default=None, metavar="JSON",
                   help='document indices per task, e.g. \'{"arc_easy": [0, 5]}\', or a JSON '
                        "file of that; incompatible with --limit")
    p.add_argument("--use_cache", "-c", default=None, metavar="<path>",
                   help="keep model answers in the answer store at this path and reuse them "
                        "(embedded coordinator)")
    p.add_argument("--cache_requests", nargs="?", const="true", default=None,
                   choices=["true", "refresh", "delete"],
                   help="cache the built requests of each task (true), rebuild them (refresh) "
                        "or delete the cache (delete)")
    p.add_argument("--output_path", "-o", default=None,
                   help="results folder, or a .json file path (lm-eval's naming)")
    p.add_argument("--log_samples", "-s", action="store_true")
    p.add_argument("--predict_only", "-x", action="store_true",
                   help="save model outputs only, no metrics (implies --log_samples)")
    p.add_argument("--seed", default="0,1234,1234,1234",
                   help="one int for all four seeds, or python,numpy,torch[,fewshot]")
    p.add_argument("--gen_kwargs", default="", nargs="+", action=_JoinValues,
                   help="k=v,... merged into generation_kwargs")
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
    p.add_argument("--metadata", default="", nargs="+", action=_JoinValues,
                   help="k=v or JSON merged into task metadata")
    p.add_argument("--device", default=None, help="device for the embedded worker")
    p.add_argument("--trust_remote_code", action="store_true",
                   help="let the model and datasets run their own code (model_args "
                        "trust_remote_code=True)")
    p.add_argument("--confirm_run_unsafe_code", action="store_true")
    p.add_argument("--allow_weak_sandbox", action="store_true",
                   help="run code tasks even without bubblewrap (embedded coordinator; programs "
                        "can then read, write and kill what you can)")
    p.add_argument("--show_config", action="store_true", help="print the whole results JSON")
    p.add_argument("--write_out", "-w", action="store_true",
                   help="print the prompt and target of each task's first document")
    p.add_argument("--verbosity", "-v", type=str.upper, default=None, metavar="<level>",
                   help="log level (lm-eval's; same as --log_level)")
    p.add_argument("--wandb_args", default="", nargs="+", action=_JoinValues,
                   metavar="<args>", help="wandb.init arguments, e.g. project=x,name=y")
    p.add_argument("--wandb_config_args", default="", nargs="+", action=_JoinValues,
                   metavar="<args>", help="extra wandb run config, key=val,...")
    p.add_argument("--mlflow_args", default="", nargs="+", action=_JoinValues,
                   metavar="<args>",
                   help="tracking_uri=...,experiment=...,run_name=...,registered_model=NAME,"
                        "model_version=N")
    p.add_argument("--coordinator_sink", action="append", default=[], metavar="<args>",
                   help="name=SINK[,run_name=...,registered_model=...,model_version=N]: ask the "
                        "coordinator to log the job to one of its configured sinks")
    p.add_argument("--price_table", default=None, metavar="FILE",
                   help="YAML or JSON prices per model (per million input, cached_input and "
                        "output tokens, batch_discount): the results carry the job's cost")
    for flag in UNSUPPORTED_FLAGS:
        p.add_argument(flag, nargs="*", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data_dir", default=None,
                   help="local dataset mirror (default: $EVALFLEET_DATA_DIR)")
    p.add_argument("--coordinator", default=None,
                   help="host:port of a running coordinator, or several comma-separated "
                        "(coordinators of one shared store: the client fails over between "
                        "them) (default: embedded services)")
    p.add_argument("--model_fingerprint", default="",
                   help="run on the coordinator's workers of this model fingerprint (see "
                        "`evalfleet workers`)")
    add_client_security_flags(p)
    p.add_argument("--store", default=None, metavar="PATH|URL",
                   help="the embedded coordinator's store: a SQLite file, sqlite:///PATH, "
                        "postgresql://..., or :memory: to keep nothing (default: "
                        "$EVALFLEET_CACHE_DIR/store.db, ~/.cache/evalfleet/store.db); answers "
                        "are kept there, so an interrupted run resumes and a repeated one "
                        "computes nothing")
    p.add_argument("--no_progress", action="store_true", help="do not show progress bars")


#: lm_eval flags evalfleet does not take, with what to do instead (see the README's table).
UNSUPPORTED_FLAGS = {
    "--check_integrity": "runs lm-eval's own task unit tests; evalfleet's task conformance "
                         "tests live in its test suite",
    "--trackio_args": "Trackio is not supported; use --wandb_args or --mlflow_args",
    "--hf_hub_log_args": "pushing to the Hugging Face Hub is not supported (no hub access); "
                         "upload the --output_path files yourself",
}


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run one service").add_subparsers(dest="service",
                                                                          required=True)
    w = serve.add_parser("worker", help="an inference worker holding one model")
    _log_level_flag(w)
    w.add_argument("--backend", default="hf")
    w.add_argument("--model_args", default="")
    w.add_argument("--batch_size", default="1")
    w.add_argument("--max_batch_size", type=int, default=None,
                   help="largest batch --batch_size auto may pick")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=50061)
    add_worker_flags(w)
    c = serve.add_parser("coordinator", help="the evaluation coordinator")
    _log_level_flag(c)
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=50051)
    c.add_argument("--workers", default="",
                   help="host:port[,host:port], or dns:///NAME:PORT (every address the name "
                        "resolves to, re-resolved), or dns://NAMESERVER/NAME:PORT")
    c.add_argument("--store", "--db", dest="store", default="evalfleet.db", metavar="PATH|URL",
                   help="job store: a SQLite file (default evalfleet.db), sqlite:///PATH, "
                        "or postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME shared by several "
                        "coordinators (--db is an alias)")
    c.add_argument("--data_dir", default=None)
    c.add_argument("--include_path", action="append", default=[])
    c.add_argument("--sinks", default=None, metavar="<yaml>",
                   help="YAML of the trackers jobs may use (format: reporting/sinks/config.py)")
    c.add_argument("--confirm_run_unsafe_code", action="store_true",
                   help="allow jobs that confirm it to run model-generated code (humaneval, mbpp)")
    add_coordinator_flags(c)


def _add_workers_parser(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("workers", help="list a coordinator's workers")
    w.add_argument("--coordinator", required=True, help="host:port of the coordinator")
    w.add_argument("--json", action="store_true", help="one JSON object per worker")
    add_client_security_flags(w)


def _add_tasks_parser(sub: argparse._SubParsersAction) -> None:
    tasks = sub.add_parser("tasks", help="list or show tasks").add_subparsers(dest="action",
                                                                             required=True)
    lst = tasks.add_parser("list", help="tasks, groups and tags, with their data")
    _log_level_flag(lst)
    lst.add_argument("--include_path", action="append", default=[])
    lst.add_argument("--data_dir", default=None)
    lst.add_argument("--json", action="store_true", help="one JSON object per task, group, tag")
    show = tasks.add_parser("show", help="render a task's first document")
    _log_level_flag(show)
    show.add_argument("name")
    show.add_argument("--include_path", action="append", default=[])
    show.add_argument("--data_dir", default=None)


def _add_results_parser(sub: argparse._SubParsersAction) -> None:
    results = sub.add_parser("results", help="show, compare, plot or report on results files")
    actions = results.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="the results table of a run")
    _log_level_flag(show)
    show.add_argument("path", help="results file, --output_path folder or .json output path")
    compare = actions.add_parser(
        "compare", help="two runs per task and metric: values, difference, stderr, p-value")
    _log_level_flag(compare)
    compare.add_argument("baseline", help="run A (the baseline)")
    compare.add_argument("candidate", help="run B (the candidate)")
    compare.add_argument("--fail-if-worse", "--fail_if_worse", dest="fail_if_worse",
                         action="append", default=[], metavar="METRIC=DELTA",
                         help="exit 1 when B is worse than A on METRIC by more than DELTA "
                              "and the difference is significant, or when a task or METRIC is "
                              "in one run only (repeatable)")
    compare.add_argument("--allow-missing", "--allow_missing", dest="allow_missing",
                         action="store_true",
                         help="with --fail-if-worse: list tasks and metrics that one run lacks "
                              "but gate only on what both runs have")
    compare.add_argument("--alpha", type=float, default=0.05,
                         help="significance level for --fail-if-worse (default 0.05)")
    compare.add_argument("--json", dest="json_out", default=None, metavar="<path>",
                         help="also write the comparison as JSON")
    plot = actions.add_parser("plot", help="metrics per task for several runs (PNG)")
    _log_level_flag(plot)
    plot.add_argument("paths", nargs="+", help="runs to plot")
    plot.add_argument("--out", required=True, help="image file (.png, .svg, .pdf)")
    plot.add_argument("--metrics", default=None, help="comma-separated metrics (default: all)")
    plot.add_argument("--title", default="Model Performance Comparison")
    report = actions.add_parser("report", help="one self-contained HTML file to browse a run")
    _log_level_flag(report)
    report.add_argument("path", help="run to report on (needs --log_samples files)")
    report.add_argument("--out", required=True, help="HTML file to write")
    report.add_argument("--title", default=None)
    for action in (compare, plot, report):
        action.add_argument("--newest", action="store_true",
                            help="of a folder's results files whose tasks differ, take the "
                                 "newest (lm-eval's rule) instead of refusing")
    fetch = actions.add_parser("fetch", help="print (and write) a finished evaluation's results "
                                             "from a coordinator or a store (also: results ID)")
    _log_level_flag(fetch)
    fetch.add_argument("id", help="the evaluation id")
    where = fetch.add_mutually_exclusive_group()
    where.add_argument("--coordinator", default=None, help="host:port of the coordinator")
    where.add_argument("--store", default=None, metavar="PATH|URL",
                       help="read the store directly (default: the embedded runs' store, "
                            "$EVALFLEET_CACHE_DIR/store.db)")
    fetch.add_argument("--output_path", "-o", default=None,
                       help="write results_<date>.json (and samples) as `eval` does")


#: ``evalfleet results ACTION ...``; anything else after ``results`` is an evaluation id.
RESULTS_ACTIONS = ("show", "compare", "plot", "report", "fetch", "-h", "--help")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evalfleet", description=(
        "Evaluate language models with lm-evaluation-harness's tasks, prompts and numbers, "
        "as gRPC services: `evalfleet eval` runs a job (lm_eval's flags), `serve` runs a "
        "coordinator or a worker, `results`/`gate` read and judge results."))
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--log_level", default=os.environ.get("EVALFLEET_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval_parser(sub)
    _add_serve_parser(sub)
    _add_workers_parser(sub)
    _add_tasks_parser(sub)
    sub.add_parser("warmup", help="compile the scoring kernels into the cache directory "
                   "($EVALFLEET_CACHE_DIR) ahead of the first evaluation (an install step)")
    _add_results_parser(sub)
    add_gate_parser(sub)
    return parser


def _log_level(args: argparse.Namespace, explicit: bool) -> str:
    level = getattr(args, "verbosity", None) or args.log_level
    if args.command == "serve" and not explicit:
        level = "INFO"
    return str(level).upper()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    explicit = any(a == "--log_level" or a.startswith("--log_level=") for a in argv)
    try:
        if argv[:1] == ["results"] and len(argv) > 1 and argv[1] not in RESULTS_ACTIONS:
            argv.insert(1, "fetch")
        if argv[:1] == ["eval"]:
            from evalfleet.client.eval_config import apply_config_file

            argv = apply_config_file(parser, argv)
        args = parser.parse_args(argv)
        from evalfleet.client.extras_needed import check_extras

        check_extras(args)  # a command whose extra is missing: one line naming it
        configure_logging(json=args.command == "serve", level=_log_level(args, explicit))
        if args.command == "eval":
            from evalfleet.client.eval_command import run_eval

            return asyncio.run(run_eval(args))
        if args.command == "serve":
            return asyncio.run(_serve(args))
        if args.command == "results":
            from evalfleet.client.results_command import run_results

            return run_results(args)
        if args.command == "gate":
            from evalfleet.client.gate_command import run_gate

            return run_gate(args)
        if args.command == "workers":
            from evalfleet.client.workers_command import run_workers

            return asyncio.run(run_workers(args))
        if args.command == "warmup":
            return _warmup()
        return _tasks(args)
    except EvalfleetError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TaskError as exc:
        print(f"error: {task_error_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `evalfleet eval --tasks list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _warmup() -> int:
    """Compile every Numba kernel (scoring and the wire scan) into the kernel cache."""
    import time

    from evalfleet.scoring._cache import kernel_cache_dir
    from evalfleet.scoring.precompile import compile_kernels
    from evalfleet.server import wire

    started = time.perf_counter()
    compile_kernels()
    wire.compile_kernels()
    print(f"kernels ready in {kernel_cache_dir()} ({time.perf_counter() - started:.1f} s)")
    from evalfleet.tasks.library import warm

    print(warm())  # lm-eval's task library index, so that the first `tasks list` is quick
    return 0


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
        if args.max_batch_size is not None:
            model_args.setdefault("max_batch_size", args.max_batch_size)
        metrics, exporter = served_metrics(args, "worker")
        backend = await asyncio.to_thread(load_backend, args.backend, model_args,
                                          _batch_size(args.batch_size))
        server = await start_worker(backend, host=args.host, port=args.port,
                                    model_args=model_args, security=worker_security(args),
                                    metrics=metrics)
        registered = registration(args, server.port)
        if registered is not None:
            registered.start()
            server.on_stop(registered.stop)
    else:
        from evalfleet.reporting.sinks.config import load_sinks_config
        from evalfleet.server.service import start_coordinator
        from evalfleet.server.store import open_store

        sinks = load_sinks_config(args.sinks) if args.sinks else None
        metrics, exporter = served_metrics(args, "coordinator")
        store = open_store(args.store)
        server, runner = await start_coordinator(
            host=args.host, port=args.port, store=store, sinks=sinks,
            confirm_run_unsafe_code=args.confirm_run_unsafe_code,
            options=coordinator_options(args))
        if metrics is not None:
            metrics.attach(runner)  # before the loop runs anything of the coordinator's
        # Jobs of a coordinator that died (this one before a restart, or another one on the
        # same store) are claimed by the runner's claim loop once their lease has expired.
        print(f"coordinator {runner.owner}, job lease {runner.lease_s:g} s", file=sys.stderr)
    if exporter is not None:
        server.on_stop(exporter.aclose)
    lifecycle.end_startup(collect=True)  # a long-running service frees start-up's garbage too
    print(f"listening on {args.host}:{server.port}", flush=True)
    await _wait_for_signal()
    await server.stop()
    if args.service == "coordinator":
        await store.close()
    return 0


def _batch_size(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def task_error_message(exc: TaskError) -> str:
    """One line for a task engine error; an unknown name gets ``eval``'s "did you mean"."""
    if isinstance(exc, TaskNotFoundError):
        hint = f"; did you mean {', '.join(exc.suggestions)}?" if exc.suggestions else ""
        return f"unknown task '{exc.name}'{hint}{exc.note}"
    return str(exc)


def _task_columns() -> tuple:
    from evalfleet.client.tables import Column

    return (Column("name", key=True), Column("kind"), Column("dataset", drop_order=1),
            Column("data"), Column("output_type", drop_order=2))


def _task_row(row: dict) -> list[str]:
    """A ``tasks list`` row: name, kind, dataset, whether its data is in the mirror, type."""
    dataset = "/".join(x for x in (row.get("dataset_path"), row.get("dataset_name")) if x)
    available = row.get("in_mirror") if row["kind"] == "task" else None
    data = "" if available is None else ("yes" if available else "no")
    return [row["name"], row["kind"], dataset,
            "cannot load" if row.get("error") else data,
            row.get("output_type") or ""]


def _tasks(args: argparse.Namespace) -> int:
    from evalfleet.tasks import TaskManager, render_task_listing, show_task

    manager = TaskManager(include_paths=args.include_path, data_dir=args.data_dir)
    if args.action == "list":
        listing = render_task_listing(manager)
        if args.json:
            import json

            print("".join(json.dumps(row) + "\n" for row in listing), end="")
        else:
            from evalfleet.client.tables import print_table

            print_table(_task_columns(), [_task_row(row) for row in listing])
        from evalfleet.tasks.file_problems import broken_lines

        print("".join(f"{line}\n" for line in broken_lines(manager.broken_files)), end="",
              file=sys.stderr)
    else:
        print(show_task(manager, args.name))
    return 0


def console_main() -> None:
    """The ``evalfleet`` command: ``main``, then the process's exit.

    The commands that load a model or serve (``eval``, ``serve``) run their start-up with the
    garbage collector deferred (``common/lifecycle.py``), which keeps seven full collections
    over torch's and transformers' objects out of a model load. The process then ends with
    ``main``'s code once the ``atexit`` handlers have run, without the interpreter's
    finalization, which only frees those objects one by one (0.5 s after a model has run)."""
    if sys.argv[1:2] in (["eval"], ["serve"]):
        lifecycle.defer_collection()
    lifecycle.exit_process(main())


if __name__ == "__main__":
    console_main()
