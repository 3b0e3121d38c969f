"""``evalfleet eval``: build a spec from lm_eval-style flags, run it, print and write results,
and log them to the trackers asked for (``--wandb_args``, ``--mlflow_args``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from evalfleet.client.connect import client_security
from evalfleet.client.interrupt import EXIT_INTERRUPTED, CtrlC
from evalfleet.common import lifecycle
from evalfleet.common.args import format_kv_args, parse_kv_args
from evalfleet.common.errors import EvalfleetError, InvalidArgumentError
from evalfleet.common.logging import get_logger
from evalfleet.common.paths import default_store_path
from evalfleet.common.price_table import load_price_table
from evalfleet.v1 import coordinator_pb2 as cpb

if TYPE_CHECKING:
    from evalfleet.client.embedded_worker import EmbeddedWorker
    from evalfleet.server.runner import JobRunner
    from evalfleet.tasks.manager import TaskTree

#: ``--tasks`` values that list instead of evaluating (lm-eval's legacy CLI).
LIST_COMMANDS = {
    "list": {},
    "list_groups": {"list_subtasks": False, "list_tags": False},
    "list_tags": {"list_groups": False, "list_subtasks": False},
    "list_subtasks": {"list_groups": False, "list_tags": False},
}
DEFAULT_SEEDS = ("0", "1234", "1234", "1234")
log = get_logger("cli")
#: Worker seconds per batch of an embedded run (a fleet coordinator's default is 2 s). Its one
#: worker serves one job, so there is no other job to share with and no tail to spread; each
#: batch costs the worker forwards that no other batch shares (the levels of its prefix tree
#: below the cached prompt, each in as few forwards as its rows allow), so fewer, larger batches
#: compute faster where a batch holds only a few documents (a CPU worker). Answers still reach
#: the store at least every ~10 s of compute.
EMBEDDED_BATCH_SECONDS = 10.0
#: Seconds a Ctrl-C waits for the batches in flight to return what the worker finished (it
#: ends them after the forward in progress); a batch later than that is not stored.
INTERRUPT_SETTLE_S = 1.5


def parse_seeds(text: str) -> cpb.Seeds:
    """lm_eval's --seed: one int for all four, or ``python,numpy,torch[,fewshot]`` (None allowed;
    a missing fewshot seed takes its default, 1234)."""
    parts = [p.strip() for p in str(text).split(",")]
    names = ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")
    if len(parts) == 1:
        parts = parts * 4
    elif len(parts) == 3:
        parts.append(DEFAULT_SEEDS[3])
    if len(parts) != 4:
        raise InvalidArgumentError(
            f"--seed: '{text}' must be one integer or 4 comma-separated values (or None)")
    seeds = cpb.Seeds()
    for name, part in zip(names, parts, strict=True):
        if part.lower() == "none":
            continue
        try:
            setattr(seeds, name, int(part))
        except ValueError as exc:
            raise InvalidArgumentError(f"--seed: '{part}' is not an integer or None") from exc
    return seeds


def model_args_text(args: argparse.Namespace) -> str:
    """``--model_args`` with what other flags add to it (``--trust_remote_code``)."""
    if not args.trust_remote_code:
        return args.model_args
    model_args = parse_kv_args(args.model_args, field="--model_args")
    model_args["trust_remote_code"] = True
    return format_kv_args(model_args) if not args.model_args.strip().startswith("{") \
        else json.dumps(model_args)


def build_spec(args: argparse.Namespace, *, worker_addresses: list[str] | None = None
               ) -> cpb.EvaluationSpec:
    """The ``EvaluationSpec`` the flags describe."""
    log_samples = args.log_samples or args.predict_only
    if log_samples and not args.output_path:
        raise InvalidArgumentError(
            "Specify --output_path if providing --log_samples or --predict_only")
    spec = cpb.EvaluationSpec(
        model=args.model, model_args=model_args_text(args),
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        batch_size=str(args.batch_size), seeds=parse_seeds(args.seed),
        gen_kwargs=args.gen_kwargs, log_samples=log_samples,
        bootstrap_iters=args.bootstrap_iters,
        apply_chat_template=args.apply_chat_template is not False,
        chat_template_name=args.apply_chat_template
        if isinstance(args.apply_chat_template, str) else "",
        system_instruction=args.system_instruction or "", include_paths=args.include_path,
        metadata=args.metadata, confirm_run_unsafe_code=args.confirm_run_unsafe_code,
        worker_addresses=worker_addresses or [], predict_only=args.predict_only,
        cache_requests=args.cache_requests or "",
        model_fingerprint=getattr(args, "model_fingerprint", "") or "",
    )
    if args.fewshot_as_multiturn is not None:
        spec.fewshot_as_multiturn = args.fewshot_as_multiturn
    for text in args.coordinator_sink:
        spec.sinks.append(parse_sink_request(text))
    if getattr(args, "price_table", None):
        spec.price_table.CopyFrom(load_price_table(args.price_table))
    if args.num_fewshot is not None:
        spec.num_fewshot = args.num_fewshot
    if args.limit is not None:
        spec.limit = args.limit
    if args.samples:
        if args.limit is not None:
            raise InvalidArgumentError("--samples cannot be combined with --limit")
        for task, indices in parse_samples(args.samples).items():
            spec.samples[task].indices.extend(indices)
    return spec


def parse_sink_request(text: str) -> cpb.SinkRequest:
    """``--coordinator_sink name=mlflow,run_name=x,registered_model=M,model_version=3``."""
    fields = {k: str(v) for k, v in parse_kv_args(text, field="--coordinator_sink").items()}
    request = cpb.SinkRequest(name=fields.pop("name", ""),
                              run_name=fields.pop("run_name", ""),
                              registered_model=fields.pop("registered_model", ""),
                              model_version=fields.pop("model_version", ""))
    if not request.name:
        raise InvalidArgumentError("--coordinator_sink: give name=<a sink configured on the "
                                   "coordinator>")
    request.tags.update(fields)
    return request


def parse_samples(text: str) -> dict[str, list[int]]:
    """``--samples``: a JSON object (inline or in a file) of task name -> document indices."""
    source = "--samples"
    if not text.lstrip().startswith("{") and Path(text).is_file():
        source, text = f"--samples file {text}", Path(text).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{source}: not JSON ({exc.msg} at char {exc.pos}); give "
                                   "an object like '{\"arc_easy\": [0, 5]}' or a file of it"
                                   ) from None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, list)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
            for k, v in value.items()):
        raise InvalidArgumentError(f"{source}: expected an object of task name -> list of "
                                   "document indices, e.g. '{\"arc_easy\": [0, 5]}'")
    return value


class OutputWriteError(EvalfleetError):
    """The results could not be written; the message says where they are kept."""


def check_flags(args: argparse.Namespace) -> None:
    """Flags evalfleet does not take, and flags that only make sense for embedded runs."""
    from evalfleet.client.cli import UNSUPPORTED_FLAGS

    for flag, why in UNSUPPORTED_FLAGS.items():
        if getattr(args, flag.lstrip("-"), None) is not None:
            raise InvalidArgumentError(f"{flag}: not supported by evalfleet ({why})")
    if not args.tasks:
        raise InvalidArgumentError("--tasks: name at least one task, group or tag "
                                   "(or 'list' to see them)")
    if args.coordinator and args.use_cache:
        raise InvalidArgumentError(
            "--use_cache: a running coordinator keeps every answer in its own store; drop "
            "--use_cache, or drop --coordinator to use an answer store at that path")
    if args.coordinator and args.store is not None:
        raise InvalidArgumentError("--store: only for the embedded coordinator; the coordinator "
                                   "given by --coordinator keeps its own store")
    if args.use_cache and args.store and os.path.abspath(args.use_cache) != \
            os.path.abspath(args.store):
        raise InvalidArgumentError("--use_cache and --store name two different stores; "
                                   "give one of them")
    if args.max_batch_size is not None and args.max_batch_size < 1:
        raise InvalidArgumentError("--max_batch_size: must be >= 1")
    for flag in ("wandb_args", "wandb_config_args", "mlflow_args"):  # trackers start later
        parse_kv_args(getattr(args, flag), field=f"--{flag}")
    if args.wandb_config_args and not args.wandb_args:
        raise InvalidArgumentError("--wandb_config_args: needs --wandb_args")


def print_task_listing(args: argparse.Namespace, data_dir: str | None) -> None:
    """``--tasks list|list_groups|list_tags|list_subtasks``: lm-eval's markdown tables."""
    from evalfleet.reporting.task_tables import task_tables
    from evalfleet.tasks import TaskManager
    from evalfleet.tasks.file_problems import broken_lines

    manager = TaskManager(include_paths=args.include_path, data_dir=data_dir)
    print(task_tables(manager, **LIST_COMMANDS[args.tasks]))
    print("".join(f"{line}\n" for line in broken_lines(manager.broken_files)), end="",
          file=sys.stderr)


def write_out(spec: cpb.EvaluationSpec, data_dir: str | None, include_paths: list[str]) -> None:
    """``--write_out``: each task's first document, as lm-eval's ``print_writeout`` logs it."""
    from evalfleet.client.writeout import writeout_lines
    from evalfleet.server.spec import parse_spec

    for line in writeout_lines(parse_spec(spec), data_dir, include_paths):
        print(line, file=sys.stderr)


async def run_eval(args: argparse.Namespace) -> int:
    """``evalfleet eval``. A Ctrl-C stops the run, keeping every answer its worker computed, and
    exits 130; a second one quits at once (``client/interrupt.py``)."""
    with CtrlC() as ctrl_c:
        try:
            return await _run_eval(args, ctrl_c)
        except asyncio.CancelledError:
            if not ctrl_c.stopped():
                raise
    print(ctrl_c.message, file=sys.stderr)
    return EXIT_INTERRUPTED


async def _run_eval(args: argparse.Namespace, ctrl_c: CtrlC) -> int:
    console = Console(stderr=True)
    data_dir = args.data_dir or os.environ.get("EVALFLEET_DATA_DIR")
    include_paths = [os.path.abspath(p) for p in args.include_path]
    args.include_path = include_paths
    if args.tasks in LIST_COMMANDS:
        lifecycle.end_startup()  # no model, no services: the listing collects as usual
        print_task_listing(args, data_dir)
        return 0
    check_flags(args)
    if args.trust_remote_code and (not args.coordinator or args.write_out):  # data read here
        import datasets

        datasets.config.HF_DATASETS_TRUST_REMOTE_CODE = True
    # --use_cache PATH: the answer store at PATH (lm-eval's model-answer cache).
    store_url = args.use_cache or args.store
    store_url = store_url if store_url is not None else str(default_store_path())
    async with AsyncExitStack() as stack:
        # The job's tasks and their data are checked before anything slow starts (no model
        # loads, no tracker run, for a task whose data is missing); the embedded worker's
        # process starts next: its model loads while the rest starts.
        tree = None if args.coordinator else _checked_tasks(args, data_dir)
        worker = None if args.coordinator else await _start_worker_process(args, stack)
        if worker is not None:
            ctrl_c.on_quit(worker.kill)  # a second Ctrl-C quits at once: its worker too
        from evalfleet.client.submit import run_job, write_outputs  # (after the worker's start)

        # Trackers start once the job is planned (a job refused at planning starts no run):
        # the embedded job's tasks and data are checked above, a coordinator's job once it
        # is created.
        sinks: list[Any] = [] if args.coordinator else client_sinks(args)
        security = None
        if args.coordinator:
            address = args.coordinator
            spec = build_spec(args)
            security = client_security(args)
            _keep_secrets(spec, console)
            if args.max_batch_size is not None:
                console.print("note: --max_batch_size applies to an embedded worker; the "
                              "coordinator's workers keep their own")
            if args.write_out:
                write_out(spec, data_dir, include_paths)
        else:
            assert worker is not None
            address = await _start_embedded(args, data_dir, stack, console, store_url, worker,
                                            ctrl_c, tree)
            spec = build_spec(args)
        lifecycle.end_startup()  # services are up: the job's own objects are collected
        job = run_job(address, spec, console=console, show_progress=not args.no_progress,
                      security=security, on_created=_start_sinks(args, sinks))
        results, samples = await (job if worker is None else worker.watch(
            job, kept=_kept_answers(store_url)))
    doc = json.loads(results.results_json)
    doc["config"]["use_cache"] = args.use_cache
    results.results_json = json.dumps(doc)
    if args.show_config:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    for sink in sinks:
        sink.log(doc, _samples_by_task(samples) if spec.log_samples else None, console)
    print(results.table)
    if doc.get("evalfleet_usage", {}).get("note"):  # e.g. the model has no price in the table
        console.print(f"note: {doc['evalfleet_usage']['note']}", markup=False, highlight=False,
                      soft_wrap=True)
    if args.output_path:
        try:
            written = write_outputs(args.output_path, results, samples)
        except OSError as exc:
            raise OutputWriteError(_kept_message(args, results.id, store_url, exc)) from exc
        for path in written:
            console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)
    for sink in sinks:
        sink.finish()
    return 0


def _keep_secrets(spec: cpb.EvaluationSpec, console: Console) -> None:
    """A coordinator's job is sent without the secrets of its model_args/metadata (api_key,
    ...): its workers use their own, so a key would only travel and be dropped there."""
    from evalfleet.common.redact import redact_spec

    sent = (spec.model_args, spec.metadata)
    if (redact_spec(spec).model_args, spec.metadata) != sent:
        console.print("note: secrets in --model_args/--metadata (api_key, token, ...) are not "
                      "sent to the coordinator: its workers use their own (their --model_args, "
                      "or OPENAI_API_KEY / ANTHROPIC_API_KEY in their environment)")


def _kept_message(args: argparse.Namespace, evaluation_id: str, store_url: str,
                  exc: OSError) -> str:
    """Why the files are missing, and the command that writes them from where they are kept."""
    from evalfleet.server.store import redact_url

    head = f"could not write the results under --output_path {args.output_path} ({exc})"
    if args.coordinator:
        return (f"{head}; evaluation {evaluation_id} succeeded and coordinator "
                f"{args.coordinator} keeps its results: write them with `evalfleet results "
                f"{evaluation_id} --coordinator {args.coordinator} --output_path DIR`")
    if store_url.strip() in (":memory:", "sqlite:///:memory:"):
        return (f"{head}; the store was :memory:, so nothing was kept: rerun with a writable "
                "--output_path")
    store = shlex.quote(redact_url(store_url))
    return (f"{head}; evaluation {evaluation_id} succeeded and its results are kept in the "
            f"store {store}: write them with `evalfleet results {evaluation_id} --store {store} "
            "--output_path DIR` (or rerun the same command: every answer is stored, so nothing "
            "is computed again)")


async def _stop_jobs(runner: JobRunner, worker: EmbeddedWorker, ctrl_c: CtrlC,
                     store_url: str) -> None:
    """The embedded run's first clean-up, while the store is open: its unfinished jobs are
    stopped (no batch sent), the worker ends the batch in flight after the forward in progress,
    what it finished is stored, and the jobs are recorded CANCELLED. On a Ctrl-C, ``ctrl_c``'s
    message says how many answers are kept."""
    from evalfleet.server.job import TERMINAL

    live = [job for job in runner.jobs.values() if job.state not in TERMINAL]
    # Taken first: a job lets go of its plan and dispatch once it has ended (Job.retire).
    dispatches = [job.dispatch for job in live if job.dispatch is not None]
    total = sum(len(job.plan.work) for job in live if job.plan is not None)
    if live:
        for job in live:
            runner.scheduler.stop(job.id)
        worker.interrupt()
        await runner.scheduler.settle(INTERRUPT_SETTLE_S)
    for job_id in list(runner.jobs):
        await runner.cancel(job_id)
    if ctrl_c.interrupted and dispatches:
        stored = sum(d.stored for d in dispatches)  # the stopped dispatches still count
        ctrl_c.message = _interrupted_message(stored, total, store_url)


def _interrupted_message(stored: int, total: int, store_url: str) -> str:
    """The line a Ctrl-C'd embedded run ends with."""
    from evalfleet.server.store import redact_url

    if store_url.strip() in (":memory:", "sqlite:///:memory:"):
        return (f"interrupted: stopped; {stored} of {total} answers were computed, but the store "
                "was :memory:, so none is kept")
    return (f"interrupted: stopped; {stored} of {total} answers stored in the store "
            f"{shlex.quote(redact_url(store_url))}; rerun the same command to resume")


def _samples_by_task(samples: list[cpb.SampleRecord]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for record in samples:
        out.setdefault(record.task, []).append(json.loads(record.json))
    return out


def _start_sinks(args: argparse.Namespace, sinks: list[Any]
                 ) -> Callable[[cpb.Evaluation], None] | None:
    """For a coordinator's job: start the trackers into ``sinks`` once the job is created."""
    if not args.coordinator:
        return None
    return lambda _evaluation: sinks.extend(client_sinks(args))


def client_sinks(args: argparse.Namespace) -> list[Any]:
    """The trackers the flags ask for, started before the run (as lm-eval starts W&B)."""
    sinks: list[Any] = []
    if args.wandb_args:
        from evalfleet.reporting.sinks.wandb_sink import WandbSink

        sinks.append(WandbSink(parse_kv_args(args.wandb_args, field="--wandb_args"),
                               parse_kv_args(args.wandb_config_args,
                                             field="--wandb_config_args")))
    if args.mlflow_args:
        from evalfleet.reporting.sinks.mlflow_sink import MlflowSink

        sinks.append(MlflowSink.from_args(parse_kv_args(args.mlflow_args,
                                                        field="--mlflow_args")))
    return sinks


async def _start_worker_process(args: argparse.Namespace, stack: AsyncExitStack
                                ) -> EmbeddedWorker:
    """Start the embedded worker's process (stopped when ``stack`` closes); the flags it needs
    are checked first."""
    from evalfleet.client.embedded_worker import EmbeddedWorker
    from evalfleet.inference.backends import canonical_backend_name
    from evalfleet.inference.embedded import WorkerSettings

    backend = canonical_backend_name(args.model)
    model_args = parse_kv_args(model_args_text(args), field="--model_args")
    if backend == "hf":  # refused before the worker starts
        from evalfleet.inference.backends.hf_quant import precheck

        precheck(model_args)
    batch_size = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size
    worker = await EmbeddedWorker.start(WorkerSettings(
        backend=args.model,
        model_args=model_args,
        batch_size=batch_size, max_batch_size=args.max_batch_size, device=args.device,
        log_level=str(args.verbosity or args.log_level).upper()))
    stack.push_async_callback(worker.stop)
    return worker


async def _start_embedded(args: argparse.Namespace, data_dir: str | None,
                          stack: AsyncExitStack, console: Console, store_url: str,
                          worker: EmbeddedWorker, ctrl_c: CtrlC, tree: TaskTree) -> str:
    """Start a coordinator on a loopback ephemeral port for this run, on the store
    ``store_url`` (answers already there are not computed again), with ``worker`` (started,
    loading its model) as its one worker; the coordinator's address. Its jobs are stopped
    first when ``stack`` closes (``_stop_jobs``)."""
    from evalfleet.server.access import AccessPolicy
    from evalfleet.server.scheduler import SchedulerConfig
    from evalfleet.server.service import CoordinatorOptions, start_coordinator
    from evalfleet.server.store import open_store, redact_url

    # The store is checked while the worker loads its model.
    if args.write_out:
        write_out(build_spec(args), data_dir, args.include_path)
    store = open_store(store_url, flag="--use_cache" if args.use_cache else "--store")
    await store.open()
    stack.push_async_callback(store.close)
    # What the coordinator needs only after the model (the data loader, the scoring kernels)
    # gets ready in a thread meanwhile.
    head_start = _head_start(stack, lambda: _ready_coordinator_modules(tree))

    pretrained = parse_kv_args(args.model_args, field="--model_args").get("pretrained", "")
    with console.status(f"loading {args.model} model {pretrained}"):
        serving = await worker.ready()
    # The coordinator plans the job next, loading datasets: never beside the head start's load
    # (the dataset stack is not thread-safe). On a CPU the model's load is the longer one.
    await _settle(head_start)
    for line in serving.notes:  # once, one line each (the worker's log has them too)
        print(f"note: {line}", file=sys.stderr)
    if args.device:  # the spec records the device the worker resolved --device to
        if serving.note:
            console.print(f"note: {serving.note}")
        args.device = serving.device
        args.model_args = format_kv_args(
            {**parse_kv_args(args.model_args, field="--model_args"), "device": args.device})
    coordinator, runner = await start_coordinator(
        workers=[serving.address], store=store, data_dir=data_dir,
        include_paths=args.include_path, confirm_run_unsafe_code=args.confirm_run_unsafe_code,
        options=CoordinatorOptions(policy=AccessPolicy.local(
                                       allow_weak_sandbox=args.allow_weak_sandbox),
                                   scheduler=SchedulerConfig(batch_seconds=EMBEDDED_BATCH_SECONDS)))
    stack.push_async_callback(coordinator.stop, 1.0)
    # Interrupted (Ctrl-C): the job is cancelled and recorded so while the store is still open;
    # its answers so far are stored and the same command resumes from them.
    stack.push_async_callback(_stop_jobs, runner, worker, ctrl_c, store_url)
    print(f"embedded coordinator {coordinator.address}, worker {serving.address} "
          f"(pid {worker.pid}), store {redact_url(store_url)}", file=sys.stderr)
    return coordinator.address


def _checked_tasks(args: argparse.Namespace, data_dir: str | None) -> TaskTree:
    """The job's tasks, loaded, with every split they read at hand (a missing split, or a
    dataset neither in the mirror nor reachable, fails here in a second: NOT_FOUND naming the
    task, the folder searched, ``--data_dir`` and ``EVALFLEET_DATA_DIR``), and its code tasks
    allowed (consent, sandbox): checked before the worker's model loads."""
    from evalfleet.execution.policy import check_unsafe_code
    from evalfleet.server.planning import check_data, load_tasks
    from evalfleet.server.spec import parse_spec

    # Spec fields are named after the flags, so errors are reported with the flag the user
    # typed.
    try:
        spec = parse_spec(build_spec(args))
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(exc.message.replace("spec.", "--", 1)) from exc
    tree = load_tasks(spec, data_dir, args.include_path)
    check_data(tree, spec)
    # code tasks: refused here, before the model loads, as the embedded coordinator would
    check_unsafe_code([n for n, t in tree.tasks.items() if t.unsafe_code],
                      operator_allows=args.confirm_run_unsafe_code,
                      job_confirms=args.confirm_run_unsafe_code,
                      allow_weak_sandbox=args.allow_weak_sandbox)
    return tree


def _kept_answers(store_url: str) -> str:
    """What became of the answers computed so far, for an error that ends the run."""
    from evalfleet.server.store import redact_url

    if store_url.strip() in (":memory:", "sqlite:///:memory:"):
        return "the store was :memory:, so its answers were not kept"
    store = shlex.quote(redact_url(store_url))
    return f"the answers computed so far are kept in the store {store}: rerun to resume"


def _ready_coordinator_modules(tree: TaskTree) -> None:
    """Ready the data loader and the scoring kernels (their modules, Numba's CPU target).

    The data loader is readied by loading the documents of one of the job's tasks: a process's
    first ``datasets.load_dataset`` pays about 0.2 s of set-up (the modules its streaming
    support patches) on top of ``datasets``' import; the coordinator's plan then loads every
    split at the speed of a second load."""
    import datasets  # noqa: F401

    from evalfleet import scoring

    for task in tree.tasks.values():
        if not task.loads_own_docs:  # a YAML task (a Python class task loads its own)
            task.all_eval_docs()
            break
    scoring.warm_up()


def _head_start(stack: AsyncExitStack, work: Callable[[], None]) -> asyncio.Future:
    """Run ``work`` in a thread (its future, also waited for when ``stack`` closes). Only a
    head start: what fails or is not done yet there happens again on first use."""

    def logged() -> None:
        try:
            work()
        except Exception as exc:  # noqa: BLE001
            log.debug("warm_up_failed", error=f"{type(exc).__name__}: {exc}")

    future = asyncio.ensure_future(asyncio.to_thread(logged))
    stack.push_async_callback(_settle, future)
    return future


async def _settle(task: asyncio.Future) -> None:
    """Wait for a background head start to end (its outcome does not matter)."""
    with contextlib.suppress(Exception):
        await task
