"""One evaluation job from spec to results: plan, dispatch, score, store.

A job is planned when it is created (so that bad tasks, data or workers are reported at once, as
statuses) and then run in the background. Every answer is written to the store as soon as its
batch returns, under the model fingerprint and the request's content id; a job that is resumed,
or a later job on the same model, only computes what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from evalfleet.common.args import parse_kv_args
from evalfleet.common.errors import (
    EvalfleetError,
    InvalidArgumentError,
    NotFoundError,
)
from evalfleet.common.ids import request_id
from evalfleet.common.logging import get_logger
from evalfleet.inference.backends.base import GenerationParams
from evalfleet.server import results as results_mod
from evalfleet.server.evaluator import TaskScorer, TaskScores, aggregate_task
from evalfleet.server.store import JobRecord, JobStore
from evalfleet.server.workers import BatchResult, WorkerPool, WorkItem, make_batches
from evalfleet.tasks import (
    DataNotFoundError,
    Request,
    SampleIndexError,
    Task,
    TaskManager,
    TaskNotFoundError,
)
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

log = get_logger("jobs")

TERMINAL = {cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED,
            cpb.EVALUATION_STATE_CANCELLED}
DEFAULT_BOOTSTRAP_ITERS = 100_000
#: Events kept per job for watchers that subscribe late (the first is always kept).
MAX_HISTORY = 1000
DEFAULT_SEEDS = {"random_seed": 0, "numpy_seed": 1234, "torch_seed": 1234, "fewshot_seed": 1234}


@dataclass
class ParsedSpec:
    """An ``EvaluationSpec`` validated and parsed into Python values."""

    spec: cpb.EvaluationSpec
    model_args: dict[str, Any]
    gen_kwargs: dict[str, Any]
    metadata: dict[str, Any]
    limit: float | int | None
    num_fewshot: int | None
    seeds: dict[str, int]
    bootstrap_iters: int
    batch_size: str
    samples: dict[str, list[int]] | None = None


def parse_spec(spec: cpb.EvaluationSpec) -> ParsedSpec:
    """Validate a spec; INVALID_ARGUMENT naming the field on any problem."""
    if not spec.tasks or not any(t.strip() for t in spec.tasks):
        raise InvalidArgumentError("spec.tasks: name at least one task, group or tag")
    model_args = parse_kv_args(spec.model_args, field="spec.model_args")
    gen_kwargs = parse_kv_args(spec.gen_kwargs, field="spec.gen_kwargs")
    metadata = parse_kv_args(spec.metadata, field="spec.metadata")
    limit: float | int | None = None
    if spec.HasField("limit"):
        if not spec.limit > 0:
            raise InvalidArgumentError("spec.limit: must be > 0 (a count, or a fraction < 1.0)")
        limit = spec.limit if spec.limit < 1.0 else int(spec.limit)
    samples: dict[str, list[int]] | None = None
    if spec.samples:
        if limit is not None:
            raise InvalidArgumentError("spec.samples: cannot be combined with spec.limit; "
                                       "drop one of them")
        samples = {name: list(doc.indices) for name, doc in spec.samples.items()}
        for name, indices in samples.items():
            if not indices or any(i < 0 for i in indices):
                raise InvalidArgumentError(
                    f"spec.samples['{name}']: give one or more document indices >= 0")
    num_fewshot = spec.num_fewshot if spec.HasField("num_fewshot") else None
    if num_fewshot is not None and num_fewshot < 0:
        raise InvalidArgumentError("spec.num_fewshot: must be >= 0")
    batch_size = spec.batch_size or "1"
    if not (batch_size.isdigit() and int(batch_size) > 0) and not (
            batch_size == "auto" or (batch_size.startswith("auto:")
                                     and batch_size[5:].isdigit())):
        raise InvalidArgumentError(
            f"spec.batch_size: '{batch_size}' is not a positive integer, 'auto' or 'auto:N'")
    seeds = dict(DEFAULT_SEEDS)
    for name in DEFAULT_SEEDS:
        if spec.seeds.HasField(name):
            seeds[name] = getattr(spec.seeds, name)
    bootstrap = spec.bootstrap_iters if spec.HasField("bootstrap_iters") else \
        DEFAULT_BOOTSTRAP_ITERS
    if bootstrap < 0:
        raise InvalidArgumentError("spec.bootstrap_iters: must be >= 0")
    for i, address in enumerate(spec.worker_addresses):
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InvalidArgumentError(
                f"spec.worker_addresses[{i}]: '{address}' is not host:port")
    return ParsedSpec(spec, model_args, gen_kwargs, metadata, limit, num_fewshot, seeds,
                      bootstrap, batch_size, samples)


def generation_params(gen_kwargs: dict[str, Any], seed: int | None) -> ipb.GenerationParams:
    """lm-eval's gen_kwargs normalised (the backends' rules) into ``GenerationParams``.

    ``seed`` seeds sampled repeats when the task's gen_kwargs give none.
    """
    normal = GenerationParams.from_gen_kwargs(gen_kwargs)
    params = ipb.GenerationParams(until=normal.until, max_gen_toks=normal.max_gen_toks,
                                  temperature=normal.temperature, do_sample=normal.do_sample)
    if normal.top_p is not None:
        params.top_p = normal.top_p
    if normal.top_k is not None:
        params.top_k = normal.top_k
    if normal.seed is not None:
        params.seed = normal.seed
    elif seed is not None and normal.do_sample:
        params.seed = seed
    return params


@dataclass
class TaskPlan:
    """A task's documents and requests, with the content id of each request."""

    task: Task
    docs: list[tuple[int, dict]]
    requests: list[Request]
    request_ids: list[str]
    answer_ids: list[str]  # one per request and repeat
    original_size: int


@dataclass
class JobPlan:
    """Everything a job will ask the workers, de-duplicated across tasks."""

    tasks: list[TaskPlan]
    groups: list[results_mod.GroupInfo]
    roots: list[str]
    work: dict[str, WorkItem]


def _task_names(tree: Any) -> list[str]:
    return list(tree.tasks.keys())


def _leaves(tree: Any, name: str) -> list[str]:
    """Leaf tasks under a group (recursively), in order."""
    group = tree.groups.get(name)
    if group is None:
        return [name] if name in tree.tasks else []
    out: list[str] = []
    for child in group.children:
        out.extend(t for t in _leaves(tree, child) if t not in out)
    return out


def load_tasks(parsed: ParsedSpec, data_dir: str | Path | None,
               include_paths: Sequence[str]) -> Any:
    """Resolve the spec's task names; NOT_FOUND with close matches for an unknown one."""
    manager = TaskManager(include_paths=[*include_paths, *parsed.spec.include_paths],
                          data_dir=data_dir, metadata={**parsed.model_args, **parsed.metadata})
    names = [n.strip() for t in parsed.spec.tasks for n in t.split(",") if n.strip()]
    try:
        return manager.load(names)
    except TaskNotFoundError as exc:
        hint = f"; did you mean {', '.join(exc.suggestions)}?" if exc.suggestions else ""
        raise NotFoundError(f"spec.tasks: unknown task '{exc.name}'{hint}") from exc
    except DataNotFoundError as exc:
        raise NotFoundError(str(exc)) from exc


def build_plan(parsed: ParsedSpec, data_dir: str | Path | None,
               include_paths: Sequence[str]) -> JobPlan:
    """Load the spec's tasks and build every request (lm-eval's, in lm-eval's order)."""
    tree = load_tasks(parsed, data_dir, include_paths)
    plans: list[TaskPlan] = []
    work: dict[str, WorkItem] = {}
    names = _task_names(tree)
    unknown = sorted(set(parsed.samples or ()) - set(names))
    if unknown:
        raise InvalidArgumentError(
            f"spec.samples: {', '.join(map(repr, unknown))} not among the job's tasks "
            f"({', '.join(names)})")
    for name in names:
        task = tree.tasks[name]
        samples = (parsed.samples or {}).get(name)
        try:
            requests = task.build_requests(
                limit=parsed.limit, samples=samples, num_fewshot=parsed.num_fewshot,
                fewshot_seed=parsed.seeds["fewshot_seed"],
                system_instruction=parsed.spec.system_instruction or None,
                apply_chat_template=parsed.spec.apply_chat_template,
                gen_kwargs=parsed.gen_kwargs or None)
            docs = task.eval_docs(parsed.limit, samples)
            original = len(task.all_eval_docs())
        except DataNotFoundError as exc:
            raise NotFoundError(str(exc)) from exc
        except SampleIndexError as exc:
            raise InvalidArgumentError(f"spec.samples['{name}']: {exc}") from exc
        except NotImplementedError as exc:
            raise InvalidArgumentError(f"task {name}: {exc}") from exc
        ids: list[str] = []
        answer_ids: list[str] = []
        for req in requests:
            rid = request_id(req.request_type, req.arguments)
            ids.append(rid)
            for r in range(max(req.repeats, 1)):
                aid = rid if req.repeats <= 1 else f"{rid}#{r}"
                answer_ids.append(aid)
                if aid not in work:
                    gen = None
                    args = req.arguments
                    if req.request_type == "generate_until":
                        gen = generation_params(
                            req.arguments[1], parsed.seeds["random_seed"] + r
                            if req.repeats > 1 else None)
                        args = (req.arguments[0],)
                    work[aid] = WorkItem(aid, req.request_type, args, gen)
        plans.append(TaskPlan(task, docs, requests, ids, answer_ids, original))
    groups = [
        results_mod.GroupInfo(
            name=g.name, alias=getattr(g, "alias", None), version=getattr(g, "version", None),
            children=list(g.children), leaves=_leaves(tree, g.name),
            aggregate_metric_list=[
                {"metric": a.metric, "filter_list": a.filter_list,
                 "weight_by_size": a.weight_by_size}
                for a in g.aggregate_metric_list])
        for g in tree.groups.values()
    ]
    return JobPlan(plans, groups, list(tree.roots), work)


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


@dataclass
class Job:
    """A job in memory: its plan, progress and the subscribers watching it."""

    id: str
    parsed: ParsedSpec
    plan: JobPlan
    pool: WorkerPool
    state: int = cpb.EVALUATION_STATE_QUEUED
    error: str = ""
    created_at: Timestamp = field(default_factory=_now)
    updated_at: Timestamp = field(default_factory=_now)
    done: dict[str, int] = field(default_factory=dict)
    positions_computed: int = 0
    subscribers: list[asyncio.Queue] = field(default_factory=list)
    history: list[cpb.EvaluationEvent] = field(default_factory=list)
    runner: asyncio.Task | None = None
    model_info: ipb.ModelInfo | None = None

    def progress(self) -> list[cpb.TaskProgress]:
        return [cpb.TaskProgress(task=p.task.name, done=self.done.get(p.task.name, 0),
                                 total=len(p.answer_ids)) for p in self.plan.tasks]

    def to_proto(self) -> cpb.Evaluation:
        return cpb.Evaluation(id=self.id, state=self.state, spec=self.parsed.spec,
                              progress=self.progress(), error=self.error,
                              created_at=self.created_at, updated_at=self.updated_at,
                              unique_requests=len(self.plan.work))

    def publish(self, message: str) -> None:
        self.updated_at = _now()
        event = cpb.EvaluationEvent(id=self.id, state=self.state, progress=self.progress(),
                                    message=message, time=self.updated_at)
        self.history.append(event)
        if len(self.history) > MAX_HISTORY:
            del self.history[1:len(self.history) - MAX_HISTORY + 1]
        for queue in self.subscribers:
            queue.put_nowait(event)


class JobRunner:
    """Runs jobs against worker pools and keeps them in the store."""

    def __init__(self, store: JobStore, *, default_workers: Sequence[str] = (),
                 data_dir: str | Path | None = None, include_paths: Sequence[str] = (),
                 batch_items: int = 512) -> None:
        self.store = store
        self.batch_items = batch_items
        self.default_workers = list(default_workers)
        self.data_dir = data_dir
        self.include_paths = list(include_paths)
        self.jobs: dict[str, Job] = {}

    async def create(self, spec: cpb.EvaluationSpec, job_id: str | None = None) -> Job:
        """Validate, plan and queue a job; errors surface here as statuses."""
        parsed = parse_spec(spec)
        pool = WorkerPool(list(spec.worker_addresses) or self.default_workers)
        info = await pool.connect()
        if spec.model and spec.model != info.backend and not info.backend.startswith(spec.model):
            await pool.close()
            raise InvalidArgumentError(
                f"spec.model: '{spec.model}' but the workers serve backend '{info.backend}'")
        try:
            plan = await asyncio.to_thread(build_plan, parsed, self.data_dir, self.include_paths)
        except BaseException:
            await pool.close()
            raise
        job = Job(id=job_id or uuid.uuid4().hex[:16], parsed=parsed, plan=plan, pool=pool,
                  model_info=info)
        self.jobs[job.id] = job
        self.store.put_job(JobRecord(job.id, spec.SerializeToString(), job.state, "",
                                     time.time(), time.time()))
        job.runner = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        log.info("job_created", job=job.id, tasks=[p.task.name for p in plan.tasks],
                 unique_requests=len(plan.work))
        return job

    async def resume_pending(self) -> list[str]:
        """Restart jobs that were queued or running when the coordinator stopped.

        Their answers already in the store are reused, so only the missing ones are computed.
        """
        resumed = []
        for record in await asyncio.to_thread(self.store.list_jobs):
            if record.state not in (cpb.EVALUATION_STATE_QUEUED, cpb.EVALUATION_STATE_RUNNING):
                continue
            try:
                await self.create(cpb.EvaluationSpec.FromString(record.spec), job_id=record.id)
                resumed.append(record.id)
            except EvalfleetError as exc:
                self.store.update_state(record.id, cpb.EVALUATION_STATE_FAILED,
                                        f"could not resume: {exc.message}")
        if resumed:
            log.info("jobs_resumed", jobs=resumed)
        return resumed

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"evaluation '{job_id}' not found")
        return job

    async def watch(self, job_id: str) -> AsyncIterator[cpb.EvaluationEvent]:
        """Every event of the job so far, then new ones until it ends."""
        job = self.get(job_id)
        queue: asyncio.Queue[cpb.EvaluationEvent] = asyncio.Queue()
        job.subscribers.append(queue)
        try:
            for event in list(job.history):
                yield event
            while job.state not in TERMINAL:
                event = await queue.get()
                yield event
            while not queue.empty():
                yield queue.get_nowait()
        finally:
            job.subscribers.remove(queue)

    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state not in TERMINAL and job.runner is not None:
            job.runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.runner
        return job

    def _set_state(self, job: Job, state: int, message: str, error: str = "") -> None:
        job.state = state
        job.error = error
        self.store.update_state(job.id, state, error)
        job.publish(message)

    async def _run(self, job: Job) -> None:
        started = time.time()
        try:
            self._set_state(job, cpb.EVALUATION_STATE_RUNNING, "running")
            await self._compute(job)
            await self._finish(job, started)
            self._set_state(job, cpb.EVALUATION_STATE_SUCCEEDED, "succeeded")
        except asyncio.CancelledError:
            self._set_state(job, cpb.EVALUATION_STATE_CANCELLED, "cancelled")
        except EvalfleetError as exc:
            log.warning("job_failed", job=job.id, error=exc.message)
            self._set_state(job, cpb.EVALUATION_STATE_FAILED, "failed", exc.message)
        except Exception as exc:  # noqa: BLE001 - recorded on the job
            log.exception("job_crashed", job=job.id)
            self._set_state(job, cpb.EVALUATION_STATE_FAILED, "failed",
                            f"internal error: {type(exc).__name__}: {exc}")
        finally:
            await job.pool.close()

    async def _compute(self, job: Job) -> None:
        fingerprint = job.model_info.fingerprint
        owners: dict[str, list[str]] = {}
        for plan in job.plan.tasks:
            for aid in plan.answer_ids:
                owners.setdefault(aid, []).append(plan.task.name)
        cached = await asyncio.to_thread(self.store.get_answers, fingerprint, list(job.plan.work))
        self._count_done(job, cached.keys(), owners)
        missing = [w for aid, w in job.plan.work.items() if aid not in cached]
        job.publish(f"{len(cached)} answers from the store, {len(missing)} to compute")
        log.info("job_dispatch", job=job.id, cached=len(cached), to_compute=len(missing))

        async def on_result(_batch: Any, result: BatchResult) -> None:
            await asyncio.to_thread(self.store.put_answers, fingerprint, result.answers.items())
            job.positions_computed += result.positions_computed
            self._count_done(job, result.answers.keys(), owners)
            job.publish(f"batch of {len(result.answers)} done on {result.worker}")

        await job.pool.run(make_batches(missing, max_items=self.batch_items), on_result)

    @staticmethod
    def _count_done(job: Job, answered: Any, owners: dict[str, list[str]]) -> None:
        for aid in answered:
            for task_name in owners.get(aid, ()):
                job.done[task_name] = job.done.get(task_name, 0) + 1

    async def _finish(self, job: Job, started: float) -> None:
        fingerprint = job.model_info.fingerprint
        answers = await asyncio.to_thread(self.store.get_answers, fingerprint,
                                          list(job.plan.work))
        parsed = job.parsed
        all_scores: list[TaskScores] = []
        for plan in job.plan.tasks:
            scorer = TaskScorer(plan.task, plan.docs, plan.requests, plan.request_ids, answers)
            scores = await asyncio.to_thread(scorer.score, log_samples=parsed.spec.log_samples)
            await asyncio.to_thread(aggregate_task, scores, parsed.bootstrap_iters)
            all_scores.append(scores)
        doc = results_mod.build_results_json(
            scores=all_scores, groups=job.plan.groups, roots=job.plan.roots,
            n_shot={p.task.name: p.task.effective_num_fewshot for p in job.plan.tasks},
            original_sizes={p.task.name: p.original_size for p in job.plan.tasks},
            config=self._config_section(job), model_info=self._model_section(job),
            spec_extras=self._extras(job), started_at=started)
        if parsed.spec.log_samples:
            doc["task_hashes"] = {
                s.task.name: hashlib.sha256("".join(
                    r["doc_hash"] + r["prompt_hash"] + r["target_hash"]
                    for r in s.samples).encode("utf-8")).hexdigest()
                for s in all_scores}
        typed = results_mod.typed_results(job.id, doc, job.positions_computed)

        await asyncio.to_thread(self.store.put_results, job.id, typed.SerializeToString(),
                                json.dumps(doc))
        if parsed.spec.log_samples:
            records = [(s.task.name, json.dumps(_sanitize(r), ensure_ascii=False))
                       for s in all_scores for r in s.samples]
            await asyncio.to_thread(self.store.put_samples, job.id, records)

    @staticmethod
    def _config_section(job: Job) -> dict[str, Any]:
        parsed, info = job.parsed, job.model_info
        return {
            "model": parsed.spec.model or info.backend,
            "model_args": parsed.model_args,
            "model_num_parameters": info.num_parameters,
            "model_dtype": info.dtype,
            "model_revision": info.revision,
            "model_sha": "",
            "batch_size": parsed.batch_size,
            "batch_sizes": [],
            "device": info.device,
            "use_cache": None,
            "limit": float(parsed.limit) if parsed.limit is not None else None,
            "bootstrap_iters": parsed.bootstrap_iters,
            "gen_kwargs": parsed.gen_kwargs,
            **parsed.seeds,
            "num_fewshot": parsed.num_fewshot,
            "workers": list(job.pool.addresses),
            "model_fingerprint": info.fingerprint,
            "positions_computed": job.positions_computed,
            "unique_requests": len(job.plan.work),
            "evaluation_id": job.id,
        }

    @staticmethod
    def _model_section(job: Job) -> dict[str, Any]:
        from importlib.metadata import version

        import transformers

        evalfleet_version = version("evalfleet")

        info = job.model_info
        name = job.parsed.model_args.get("pretrained") or info.model_name
        return {
            "transformers_version": transformers.__version__,
            "evalfleet_version": evalfleet_version,
            "upper_git_hash": None,
            "tokenizer_pad_token": [info.pad_token, ""] if info.pad_token else None,
            "tokenizer_eos_token": [info.eos_token, ""] if info.eos_token else None,
            "tokenizer_bos_token": [info.bos_token, ""] if info.bos_token else None,
            "eot_token_id": info.eot_token_id,
            "max_length": info.max_length,
            "task_hashes": {},
            "model_source": job.parsed.spec.model or info.backend,
            "model_name": str(name),
            "model_name_sanitized": results_mod.sanitize_model_name(str(name)),
        }

    @staticmethod
    def _extras(job: Job) -> dict[str, Any]:
        spec = job.parsed.spec
        return {
            "system_instruction": spec.system_instruction or None,
            "system_instruction_sha": None,
            "fewshot_as_multiturn": spec.fewshot_as_multiturn or None,
            "chat_template": None,
            "chat_template_sha": None,
        }


def _sanitize(value: Any) -> Any:
    """Samples as lm-eval writes them: tuples become lists, unknown objects strings."""
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
