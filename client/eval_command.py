"""``evalfleet eval``: build a spec from lm_eval-style flags, run it, print and write results."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from evalfleet.client.submit import run_job, write_outputs
from evalfleet.common.args import format_kv_args, parse_kv_args
from evalfleet.common.errors import EvalfleetError, InvalidArgumentError
from evalfleet.common.paths import default_store_path
from evalfleet.v1 import coordinator_pb2 as cpb


def parse_seeds(text: str) -> cpb.Seeds:
    """lm_eval's --seed: one int for all four, or ``python,numpy,torch,fewshot`` (None allowed)."""
    parts = [p.strip() for p in text.split(",")]
    names = ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")
    if len(parts) == 1:
        parts = parts * 4
    if len(parts) != 4:
        raise InvalidArgumentError(
            f"--seed: '{text}' must be one integer or four comma-separated values")
    seeds = cpb.Seeds()
    for name, part in zip(names, parts, strict=True):
        if part.lower() == "none":
            continue
        try:
            setattr(seeds, name, int(part))
        except ValueError as exc:
            raise InvalidArgumentError(f"--seed: '{part}' is not an integer") from exc
    return seeds


def build_spec(args: argparse.Namespace, *, worker_addresses: list[str] | None = None
               ) -> cpb.EvaluationSpec:
    """The ``EvaluationSpec`` the flags describe."""
    if args.log_samples and not args.output_path:
        raise InvalidArgumentError("--log_samples needs --output_path")
    spec = cpb.EvaluationSpec(
        model=args.model, model_args=args.model_args,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        batch_size=str(args.batch_size), seeds=parse_seeds(args.seed),
        gen_kwargs=args.gen_kwargs, log_samples=args.log_samples,
        bootstrap_iters=args.bootstrap_iters,
        apply_chat_template=args.apply_chat_template is not False,
        chat_template_name=args.apply_chat_template
        if isinstance(args.apply_chat_template, str) else "",
        system_instruction=args.system_instruction, include_paths=args.include_path,
        metadata=args.metadata, confirm_run_unsafe_code=args.confirm_run_unsafe_code,
        worker_addresses=worker_addresses or [],
    )
    if args.fewshot_as_multiturn is not None:
        spec.fewshot_as_multiturn = args.fewshot_as_multiturn
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


async def run_eval(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    data_dir = args.data_dir or os.environ.get("EVALFLEET_DATA_DIR")
    include_paths = [os.path.abspath(p) for p in args.include_path]
    args.include_path = include_paths
    if args.coordinator and args.store is not None:
        raise InvalidArgumentError("--store: only for the embedded coordinator; the coordinator "
                                   "given by --coordinator keeps its own store")
    store_url = args.store if args.store is not None else str(default_store_path())
    async with AsyncExitStack() as stack:
        if args.coordinator:
            address = args.coordinator
            spec = build_spec(args)
        else:
            address, worker = await _start_embedded(args, data_dir, stack, console, store_url)
            spec = build_spec(args, worker_addresses=[worker])
        results, samples = await run_job(address, spec, console=console,
                                         show_progress=not args.no_progress)
    doc = json.loads(results.results_json)
    if args.show_config:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    print(results.table)
    if args.output_path:
        try:
            written = write_outputs(args.output_path, results, samples)
        except OSError as exc:
            raise OutputWriteError(_kept_message(args, results.id, store_url, exc)) from exc
        for path in written:
            console.print(f"wrote {path}")
    return 0


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


async def _cancel_jobs(runner: Any) -> None:
    for job_id in list(runner.jobs):
        await runner.cancel(job_id)


async def _start_embedded(args: argparse.Namespace, data_dir: str | None,
                          stack: AsyncExitStack, console: Console, store_url: str
                          ) -> tuple[str, str]:
    """Start one worker and a coordinator on loopback ephemeral ports for this run, the
    coordinator on the store ``store_url`` (answers already there are not computed again)."""
    import asyncio

    from evalfleet.inference.server import load_backend, start_worker
    from evalfleet.server.planning import load_tasks
    from evalfleet.server.service import start_coordinator
    from evalfleet.server.spec import parse_spec
    from evalfleet.server.store import open_store, redact_url

    # Check the spec and the tasks before paying for the model load. Spec fields are named
    # after the flags, so errors are reported with the flag the user typed.
    try:
        parse_spec(build_spec(args))
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(exc.message.replace("spec.", "--", 1)) from exc
    model_args = parse_kv_args(args.model_args, field="--model_args")
    if args.device:
        model_args.setdefault("device", args.device)
        args.model_args = format_kv_args(model_args)
    spec = build_spec(args)
    await asyncio.to_thread(load_tasks, parse_spec(spec), data_dir, args.include_path)
    store = open_store(store_url, flag="--store")
    await store.open()  # a bad --store is reported before the model loads
    stack.push_async_callback(store.close)

    with console.status(f"loading {args.model} model {model_args.get('pretrained', '')}"):
        batch_size = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size
        backend = await asyncio.to_thread(load_backend, args.model, model_args, batch_size)
    worker = await start_worker(backend, model_args=model_args)
    stack.push_async_callback(worker.stop, 1.0)
    coordinator, runner = await start_coordinator(
        workers=[worker.address], store=store, data_dir=data_dir,
        include_paths=args.include_path)
    stack.push_async_callback(coordinator.stop, 1.0)
    # Interrupted (Ctrl-C): the job is cancelled and recorded so while the store is still open;
    # its answers so far are stored and the same command resumes from them.
    stack.push_async_callback(_cancel_jobs, runner)
    print(f"embedded coordinator {coordinator.address}, worker {worker.address}, "
          f"store {redact_url(store_url)}", file=sys.stderr)
    return coordinator.address, worker.address
