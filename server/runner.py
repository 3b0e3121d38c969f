"""Running evaluation jobs from spec to results: create, resume, watch, cancel, finish.

A job is validated and planned when it is created (so that bad specs, tasks, data, workers or
capabilities are reported at once, as statuses) and then run in the background: its missing
answers are computed (:mod:`evalfleet.server.dispatch`), then every task is scored and the
results are stored. A job that is resumed, or a later job on the same model, only computes what
is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from evalfleet.common.errors import (
    EvalfleetError,
    FailedPreconditionError,
    NotFoundError,
)
from evalfleet.common.logging import get_logger
from evalfleet.execution.policy import check_unsafe_code
from evalfleet.server import job_hooks, lmeval_sections
from evalfleet.server import results as results_mod
from evalfleet.server.access import AccessPolicy
from evalfleet.server.capabilities import check_chat_only, check_request_kinds
from evalfleet.server.chat import (
    ChatRenderer,
    json_messages_renderer,
    require_chat_support,
    worker_renderer,
)
from evalfleet.server.dispatch import compute_missing
from evalfleet.server.evaluator import TaskScorer, TaskScores, aggregate_task
from evalfleet.server.job import TERMINAL, Job
from evalfleet.server.planning import build_plan, load_tasks
from evalfleet.server.registry import Worker, WorkerRegistry
from evalfleet.server.scheduler import Scheduler
from evalfleet.server.spec import ParsedSpec, parse_spec
from evalfleet.server.store import ACTIVE_STATES, JobRecord, JobStore
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

log = get_logger("jobs")

#: Seconds a coordinator's claim on a job lasts without renewal (see ``server/store``).
DEFAULT_LEASE_S = 60.0

#: lm-eval output types and the request kinds they ask for.
_OUTPUT_KINDS = {"multiple_choice": "loglikelihood", "loglikelihood": "loglikelihood",
                 "loglikelihood_rolling": "loglikelihood_rolling",
                 "generate_until": "generate_until"}


async def _chat_renderer(parsed: ParsedSpec, workers: list[Worker]) -> ChatRenderer | None:
    """How this job's prompts get the model's chat template (None without one)."""
    if not parsed.apply_chat_template:
        return None
    support = {w.address: w.info.capabilities.chat_template for w in workers}
    for address, kind in support.items():
        require_chat_support(kind, address)
    if len(set(support.values())) > 1:
        raise FailedPreconditionError(
            "apply_chat_template: the workers render chat templates differently "
            f"({', '.join(f'{a}={ipb.ChatTemplateSupport.Name(k)}' for a, k in support.items())}"
            "); run the job on workers of one backend")
    if next(iter(support.values())) == ipb.CHAT_TEMPLATE_SUPPORT_MESSAGES:
        return json_messages_renderer()
    client = workers[0].client
    return await worker_renderer(client.stub, parsed.spec.chat_template_name,
                                 metadata=client.metadata)


class JobRunner:
    """Runs jobs on the registry's workers and keeps them in the store."""

    def __init__(self, store: JobStore, registry: WorkerRegistry, scheduler: Scheduler, *,
                 data_dir: str | Path | None = None, include_paths: Sequence[str] = (),
                 policy: AccessPolicy | None = None, worker_wait_s: float = 10.0,
                 owner: str | None = None, lease_s: float = DEFAULT_LEASE_S,
                 sinks: dict[str, Any] | None = None,
                 confirm_run_unsafe_code: bool = False) -> None:
        self.store = store
        self.registry = registry
        self.scheduler = scheduler
        self.sinks = sinks
        #: This coordinator's id as the store's job owner (unique per process).
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        #: the operator's consent to run generated code (jobs must confirm it too)
        self.confirm_run_unsafe_code = confirm_run_unsafe_code
        self.data_dir = data_dir
        self.include_paths = list(include_paths)
        self.policy = policy or AccessPolicy()
        self.worker_wait_s = worker_wait_s
        self.jobs: dict[str, Job] = {}

    async def create(self, spec: cpb.EvaluationSpec, job_id: str | None = None) -> Job:
        """Validate, plan and queue a job; errors surface here as statuses."""
        self.policy.check_size(spec)
        job_hooks.prepare_spec(spec, self.sinks)
        parsed = parse_spec(spec)
        self.policy.check_spec(spec, parsed.model_args)
        allowed = set(spec.worker_addresses) or None
        if allowed:
            self.registry.acquire(allowed)
        try:
            workers = await self.registry.select(
                backend=spec.model, model_args=parsed.model_args,
                fingerprint=spec.model_fingerprint, allowed=allowed, wait_s=self.worker_wait_s)
            info = workers[0].info
            infos = {w.address: w.info for w in workers}
            check_chat_only(parsed.apply_chat_template, infos)
            tree = await asyncio.to_thread(load_tasks, parsed, self.data_dir, self.include_paths)
            self.policy.check_tasks(len(tree.tasks))
            check_unsafe_code([n for n, t in tree.tasks.items() if t.unsafe_code],
                              operator_allows=self.confirm_run_unsafe_code,
                              job_confirms=spec.confirm_run_unsafe_code)
            check_request_kinds(
                {name: {_OUTPUT_KINDS[t.output_type]} for name, t in tree.tasks.items()
                 if t.output_type in _OUTPUT_KINDS}, infos)
            chat = await _chat_renderer(parsed, workers)
            plan = await asyncio.to_thread(build_plan, parsed, self.data_dir,
                                           self.include_paths, chat, tree)
            self.policy.check_requests(len(plan.work))
            check_request_kinds({p.task.name: p.request_types for p in plan.tasks}, infos)
        except BaseException:
            if allowed:
                self.registry.release(allowed)
            raise
        job = Job(id=job_id or uuid.uuid4().hex[:16], parsed=parsed, plan=plan,
                  model_info=info, allowed=allowed)
        self.jobs[job.id] = job
        now = time.time()
        await self.store.put_job(JobRecord(job.id, spec.SerializeToString(), job.state, "",
                                           now, now, owner=self.owner,
                                           lease_until=now + self.lease_s))
        job.runner = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        log.info("job_created", job=job.id, tasks=[p.task.name for p in plan.tasks],
                 unique_requests=len(plan.work), model=info.fingerprint[:19],
                 workers=sorted(infos))
        return job

    async def resume_pending(self) -> list[str]:
        """Restart jobs that were queued or running when the coordinator stopped.

        Their answers already in the store are reused, so only the missing ones are computed.
        """
        resumed = []
        for record in await self.store.list_jobs():
            if record.state not in (cpb.EVALUATION_STATE_QUEUED, cpb.EVALUATION_STATE_RUNNING):
                continue
            try:
                await self.create(cpb.EvaluationSpec.FromString(record.spec), job_id=record.id)
                resumed.append(record.id)
            except EvalfleetError as exc:
                await self.store.put_job(dataclasses.replace(
                    record, state=cpb.EVALUATION_STATE_FAILED, updated_at=time.time(),
                    error=f"could not resume: {exc.message}", owner=self.owner, lease_until=0))
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
        """Stop the job: no batch of it is sent once this returns."""
        job = self.get(job_id)
        self.scheduler.stop(job_id)
        if job.state not in TERMINAL and job.runner is not None:
            job.runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.runner
        return job

    async def _set_state(self, job: Job, state: int, message: str, error: str = "") -> None:
        job.state = state
        job.error = error
        if await self.store.transition(job.id, self.owner, ACTIVE_STATES, state,
                                       error=error) is None:
            log.warning("job_state_refused", job=job.id, state=state, owner=self.owner)
        job.publish(message)

    async def _run(self, job: Job) -> None:
        started = time.time()
        try:
            await self._set_state(job, cpb.EVALUATION_STATE_RUNNING, "running")
            await compute_missing(job, self.store, self.scheduler)
            await self._finish(job, started)
            await self._set_state(job, cpb.EVALUATION_STATE_SUCCEEDED, "succeeded")
        except asyncio.CancelledError:
            await self._set_state(job, cpb.EVALUATION_STATE_CANCELLED, "cancelled")
        except EvalfleetError as exc:
            log.warning("job_failed", job=job.id, error=exc.message)
            await self._set_state(job, cpb.EVALUATION_STATE_FAILED, "failed", exc.message)
        except Exception as exc:  # noqa: BLE001 - recorded on the job
            log.exception("job_crashed", job=job.id)
            await self._set_state(job, cpb.EVALUATION_STATE_FAILED, "failed",
                                  f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if job.allowed:
                self.registry.release(job.allowed)

    async def _finish(self, job: Job, started: float) -> None:
        fingerprint = job.model_info.fingerprint
        answers = await self.store.get_answers(fingerprint, list(job.plan.work))
        parsed = job.parsed
        all_scores: list[TaskScores] = []
        for plan in job.plan.tasks:
            try:
                scorer = TaskScorer(plan.task, plan.docs, plan.requests, plan.request_ids,
                                    answers, allow_code=self.confirm_run_unsafe_code
                                    and parsed.spec.confirm_run_unsafe_code)
                scores = await asyncio.to_thread(scorer.score,
                                                 log_samples=parsed.spec.log_samples)
                await asyncio.to_thread(aggregate_task, scores, parsed.bootstrap_iters)
                job_hooks.finish_scores(scores)
            except Exception as exc:
                where = plan.task.cfg.source if hasattr(plan.task, "cfg") else \
                    plan.task.source  # a Python class task has no YAML config object
                raise job_hooks.finishing_failed(f"scoring task '{plan.task.name}' "
                                                 f"({where})", len(answers), exc) from exc
            all_scores.append(scores)
        try:
            doc, typed = self._results_document(job, all_scores, started)
        except Exception as exc:
            raise job_hooks.finishing_failed("building the results document", len(answers),
                                             exc) from exc
        await self.store.put_results(job.id, self.owner, typed.SerializeToString(),
                                     json.dumps(doc))
        if parsed.spec.log_samples:
            records = [(s.task.name,
                        json.dumps(lmeval_sections.sanitize_sample(r), ensure_ascii=False))
                       for s in all_scores for r in s.samples]
            await self.store.put_samples(job.id, self.owner, records)
        await job_hooks.log_to_sinks(parsed.spec, self.sinks, doc,
                                     records if parsed.spec.log_samples else [], job.publish)

    @staticmethod
    def _results_document(job: Job, all_scores: list[TaskScores], started: float
                          ) -> tuple[dict[str, Any], cpb.EvaluationResults]:
        """The lm-eval results document of a scored job and its typed message."""
        parsed = job.parsed
        doc = results_mod.build_results_json(
            scores=all_scores, groups=job.plan.groups, roots=job.plan.roots,
            n_shot={p.task.name: p.task.effective_num_fewshot for p in job.plan.tasks},
            original_sizes={p.task.name: p.original_size for p in job.plan.tasks},
            config=lmeval_sections.config_section(job),
            model_info=lmeval_sections.model_section(job),
            spec_extras=lmeval_sections.chat_section(job), started_at=started)
        if parsed.spec.log_samples:
            doc["task_hashes"] = lmeval_sections.task_hashes(all_scores)
        return doc, results_mod.typed_results(job.id, doc, job.positions_computed)
