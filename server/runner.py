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
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any

from evalfleet.common.errors import (
    EvalfleetError,
    FailedPreconditionError,
    NotFoundError,
)
from evalfleet.common.logging import get_logger
from evalfleet.common.redact import redact_mapping, redact_spec
from evalfleet.execution.policy import check_unsafe_code
from evalfleet.server import job_hooks, lmeval_sections
from evalfleet.server import results as results_mod
from evalfleet.server.access import AccessPolicy
from evalfleet.server.capabilities import check_batch_api, check_chat_only, check_request_kinds
from evalfleet.server.chat import (
    ChatRenderer,
    json_messages_renderer,
    require_chat_support,
    worker_renderer,
)
from evalfleet.server.dispatch import compute_missing
from evalfleet.server.evaluator import TaskScorer, TaskScores, aggregate_task
from evalfleet.server.job import TERMINAL, Job
from evalfleet.server.planning import JobPlan, build_plan, load_tasks
from evalfleet.server.registry import Worker, WorkerRegistry
from evalfleet.server.scheduler import Scheduler
from evalfleet.server.spec import ParsedSpec, parse_spec
from evalfleet.server.store import ACTIVE_STATES, JobRecord, JobStore
from evalfleet.server.store.base import decode_progress, encode_progress
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

log = get_logger("jobs")

#: The error of a job cancelled by a coordinator that did not run it.
CANCELLED_ELSEWHERE = "cancelled (by a request to another coordinator of its store)"
#: Seconds a coordinator's claim on a job lasts without renewal (see ``server/store``).
DEFAULT_LEASE_S = 30.0
#: Finished jobs kept in memory (retired: spec, state, final progress; a few KB each), newest
#: first; older ones are answered from the store.
KEEP_FINISHED_JOBS = 128

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
    """Runs jobs on the registry's workers and keeps them in the store, under leases.

    Every job this runner runs is held under a lease in the store (``owner``, ``lease_s``): one
    heartbeat task renews them all every ``lease_s / 3``; a job whose renewal is refused (another
    coordinator claimed it after this one overslept) is stopped at once and its state is no
    longer written from here. With ``claim_interval_s`` (``serve coordinator``), a claim loop
    takes over jobs whose coordinator died (lease expired) or handed them back, and resumes them
    under the same id, reusing every stored answer; a claimed job that finds no worker for its
    model waits (QUEUED, handed back, retried) instead of failing.
    """

    def __init__(self, store: JobStore, registry: WorkerRegistry, scheduler: Scheduler, *,
                 data_dir: str | Path | None = None, include_paths: Sequence[str] = (),
                 policy: AccessPolicy | None = None, worker_wait_s: float = 10.0,
                 owner: str | None = None, lease_s: float = DEFAULT_LEASE_S,
                 claim_interval_s: float | None = None, follow_poll_s: float = 1.0,
                 sinks: dict[str, Any] | None = None,
                 confirm_run_unsafe_code: bool = False,
                 keep_finished: int = KEEP_FINISHED_JOBS) -> None:
        self.store = store
        self.registry = registry
        self.scheduler = scheduler
        self.sinks = sinks
        #: This coordinator's id as the store's job owner (unique per process).
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        #: seconds between claims of abandoned jobs (None: this runner claims none)
        self.claim_interval_s = claim_interval_s
        #: seconds between store reads while following a job another process runs
        self.follow_poll_s = follow_poll_s
        #: the operator's consent to run generated code (jobs must confirm it too)
        self.confirm_run_unsafe_code = confirm_run_unsafe_code
        self.data_dir = data_dir
        self.include_paths = list(include_paths)
        self.policy = policy or AccessPolicy()
        self.worker_wait_s = worker_wait_s
        #: the jobs this process runs, and its newest ``keep_finished`` finished (retired) ones
        self.jobs: dict[str, Job] = {}
        self.keep_finished = keep_finished
        self._finished: dict[str, Job] = {}  # retired jobs still in ``jobs``, oldest first
        #: ids of the jobs whose lease this runner holds (renewed by the heartbeat)
        self.held: set[str] = set()
        self._retry_at: dict[str, float] = {}  # claimed jobs waiting for workers: next try
        self._resuming: dict[str, asyncio.Task] = {}
        self._loops: list[asyncio.Task] = []
        #: one job's tasks are loaded and planned at a time: the dataset stack is not safe in
        #: concurrent threads (two concurrent CreateEvaluation calls failed with "type object
        #: 'tqdm' has no attribute '_lock'" from its progress bars)
        self._planning = asyncio.Lock()

    # -- life of the runner --------------------------------------------------------------

    def start(self) -> None:
        """Start the lease heartbeat (and the claim loop when ``claim_interval_s`` is set)."""
        if self._loops:
            return
        self._loops.append(asyncio.create_task(self._heartbeat(), name="job-leases"))
        if self.claim_interval_s:
            self._loops.append(asyncio.create_task(self._claim_loop(), name="job-claims"))

    async def close(self) -> None:
        """Graceful stop: unfinished jobs are stopped without a state change and their leases
        released, so another coordinator (or this one restarted) takes them over at once."""
        for task in [*self._loops, *self._resuming.values()]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._resuming.values(), return_exceptions=True)
        self._loops.clear()
        self._resuming.clear()
        for job in list(self.jobs.values()):
            if job.state in TERMINAL or job.lost:
                continue
            job.lost = True
            self.scheduler.stop(job.id)
            if job.runner is not None:
                job.runner.cancel()
                await asyncio.gather(job.runner, return_exceptions=True)
            job.publish("coordinator stopping: job handed back to the store")
        released = []
        for job_id in sorted(self.held):
            with contextlib.suppress(Exception):
                if await self.store.release(job_id, self.owner):
                    released.append(job_id)
        self.held.clear()
        if released:
            log.info("jobs_released", jobs=released, owner=self.owner)

    # -- creating and resuming -----------------------------------------------------------

    def _parse(self, spec: cpb.EvaluationSpec) -> ParsedSpec:
        self.policy.check_size(spec)
        job_hooks.prepare_spec(spec, self.sinks)
        parsed = parse_spec(spec)
        self.policy.check_spec(spec, parsed.model_args)
        # Secrets in model_args/metadata (api_key, ...) are hidden before the spec is stored,
        # answered or planned with: the workers use their own model_args, never the spec's.
        redact_spec(spec)
        parsed.model_args = redact_mapping(parsed.model_args)
        parsed.metadata = redact_mapping(parsed.metadata)
        return parsed

    async def _select(self, spec: cpb.EvaluationSpec, parsed: ParsedSpec,
                      allowed: set[str] | None, wait_s: float) -> list[Worker]:
        """The job's workers, with what they can answer now: their model info is fetched
        again (a remote backend re-probes its server's logprobs when its last probe is
        ``probe_interval_s`` old), then the choice is made on the fresh answers."""
        deadline = time.monotonic() + wait_s  # one wait in all, not one per choice

        def choose() -> Awaitable[list[Worker]]:
            return self.registry.select(
                backend=spec.model, model_args=parsed.model_args,
                fingerprint=spec.model_fingerprint, allowed=allowed,
                wait_s=max(0.0, deadline - time.monotonic()))

        await self.registry.refresh_info(await choose())
        return await choose()

    async def _plan(self, spec: cpb.EvaluationSpec, parsed: ParsedSpec,
                    workers: list[Worker]) -> JobPlan:
        infos = {w.address: w.info for w in workers}
        async with self._planning:
            tree = await asyncio.to_thread(load_tasks, parsed, self.data_dir,
                                           self.include_paths)
        self.policy.check_tasks(len(tree.tasks))
        await asyncio.to_thread(check_unsafe_code,
                                [n for n, t in tree.tasks.items() if t.unsafe_code],
                                operator_allows=self.confirm_run_unsafe_code,
                                job_confirms=spec.confirm_run_unsafe_code,
                                allow_weak_sandbox=self.policy.allow_weak_sandbox)
        check_request_kinds(
            {name: {_OUTPUT_KINDS[t.output_type]} for name, t in tree.tasks.items()
             if t.output_type in _OUTPUT_KINDS}, infos,
            multiple_choice={n for n, t in tree.tasks.items()
                             if t.output_type == "multiple_choice"},
            apply_chat_template=parsed.apply_chat_template)
        check_chat_only(parsed.apply_chat_template, infos)  # after: that refusal names both
        check_batch_api(parsed.model_args, infos)
        chat = await _chat_renderer(parsed, workers)
        async with self._planning:
            plan = await asyncio.to_thread(build_plan, parsed, self.data_dir,
                                           self.include_paths, chat, tree)
        self.policy.check_requests(len(plan.work))
        check_request_kinds({p.task.name: p.request_types for p in plan.tasks}, infos)
        return plan

    async def create(self, spec: cpb.EvaluationSpec) -> Job:
        """Validate, plan and queue a job owned by this runner; errors surface here as
        statuses."""
        parsed = self._parse(spec)
        allowed = set(spec.worker_addresses) or None
        if allowed:
            self.registry.acquire(allowed)
        try:
            workers = await self._select(spec, parsed, allowed, self.worker_wait_s)
            plan = await self._plan(spec, parsed, workers)
            job = Job(id=uuid.uuid4().hex[:16], parsed=parsed, plan=plan,
                      model_info=workers[0].info, allowed=allowed)
            now = time.time()
            if not await self.store.create_job(JobRecord(
                    job.id, spec.SerializeToString(), job.state, "", now, now,
                    owner=self.owner, lease_until=now + self.lease_s)):
                raise FailedPreconditionError(f"evaluation '{job.id}' already exists")
        except BaseException:
            if allowed:
                self.registry.release(allowed)
            raise
        self._start_job(job)
        log.info("job_created", job=job.id, tasks=[p.task.name for p in plan.tasks],
                 unique_requests=len(plan.work), model=job.model_info.fingerprint[:19],
                 workers=sorted(w.address for w in workers), owner=self.owner)
        return job

    def _start_job(self, job: Job) -> None:
        self._finished.pop(job.id, None)  # an earlier run of it, lost, then claimed again
        self.jobs[job.id] = job
        self.held.add(job.id)
        job.runner = asyncio.create_task(self._run(job), name=f"job-{job.id}")

    async def claim_once(self) -> list[str]:
        """Claim the store's abandoned jobs (lease expired, or handed back) and start resuming
        them; returns the ids claimed. Jobs waiting for workers are retried after a pause."""
        claimed = []
        now = time.monotonic()
        for job_id in [i for i, at in self._retry_at.items() if at <= now]:
            del self._retry_at[job_id]  # due (or taken by another coordinator): forgotten
        for record in await self.store.list_claimable():
            if self._retry_at.get(record.id, 0.0) > now or record.id in self._resuming:
                continue
            job = self.jobs.get(record.id)
            if job is not None and not job.lost and job.state not in TERMINAL:
                continue  # still ours (a renewal ran late); the heartbeat renews it
            taken = await self.store.claim_job(record.id, self.owner, self.lease_s)
            if taken is None:
                continue  # another coordinator was faster
            self.held.add(taken.id)
            claimed.append(taken.id)
            log.info("job_claimed", job=taken.id, owner=self.owner, attempts=taken.attempts,
                     previous_state=cpb.EvaluationState.Name(taken.state))
            task = asyncio.create_task(self._resume(taken), name=f"resume-{taken.id}")
            self._resuming[taken.id] = task
            task.add_done_callback(lambda _t, i=taken.id: self._resuming.pop(i, None))
        return claimed

    async def _resume(self, record: JobRecord) -> None:
        """Rebuild a claimed job's plan and run it; answers already stored are reused."""
        spec = cpb.EvaluationSpec.FromString(record.spec)
        allowed = set(spec.worker_addresses) or None
        try:
            parsed = self._parse(spec)
        except EvalfleetError as exc:
            await self._fail_claimed(record.id, f"could not resume: {exc.message}")
            return
        if allowed:
            self.registry.acquire(allowed)
        try:
            try:
                workers = await self._select(spec, parsed, allowed,
                                             min(self.worker_wait_s, self.lease_s / 2))
            except EvalfleetError as exc:
                # Workers come and go: a resumed job waits for them rather than failing.
                await self._wait_for_workers(record.id, exc.message)
                if allowed:
                    self.registry.release(allowed)
                return
            plan = await self._plan(spec, parsed, workers)
        except EvalfleetError as exc:
            if allowed:
                self.registry.release(allowed)
            await self._fail_claimed(record.id, f"could not resume: {exc.message}")
            return
        except BaseException:
            if allowed:
                self.registry.release(allowed)
            raise
        if record.id not in self.held:  # the lease was lost while planning
            if allowed:
                self.registry.release(allowed)
            return
        self._retry_at.pop(record.id, None)
        job = Job(id=record.id, parsed=parsed, plan=plan, model_info=workers[0].info,
                  allowed=allowed, state=record.state)
        job.created_at.FromNanoseconds(int(record.created_at * 1e9))
        self._start_job(job)
        job.publish(f"resumed by coordinator {self.owner} (takeover {record.attempts})")
        log.info("job_resumed", job=job.id, owner=self.owner, attempts=record.attempts,
                 unique_requests=len(plan.work), workers=sorted(w.address for w in workers))

    async def _wait_for_workers(self, job_id: str, reason: str) -> None:
        """Keep a claimed job QUEUED with what it waits for, hand it back and retry later."""
        message = f"waiting for workers: {reason}"
        await self.store.transition(job_id, self.owner, ACTIVE_STATES,
                                    cpb.EVALUATION_STATE_QUEUED, error=message)
        await self.store.release(job_id, self.owner)
        self.held.discard(job_id)
        self._retry_at[job_id] = time.monotonic() + max(2.0, 2 * (self.claim_interval_s or 0))
        log.info("job_waiting_for_workers", job=job_id, reason=reason, owner=self.owner)

    async def _fail_claimed(self, job_id: str, error: str) -> None:
        """A claimed job that no retry can run (bad spec or tasks): FAILED, with the reason."""
        self.held.discard(job_id)
        self._retry_at.pop(job_id, None)
        if await self.store.transition(job_id, self.owner, ACTIVE_STATES,
                                       cpb.EVALUATION_STATE_FAILED, error=error) is not None:
            log.warning("job_failed", job=job_id, error=error, owner=self.owner)
            self.scheduler.metrics.job_ended("EVALUATION_STATE_FAILED")

    async def _claim_loop(self) -> None:
        while True:
            try:
                await self.claim_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the store may be briefly unreachable
                log.exception("job_claim_failed", owner=self.owner)
            await asyncio.sleep(self.claim_interval_s or 1.0)

    # -- leases ----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            for job_id in sorted(self.held):
                try:
                    kept = await self.store.renew_lease(job_id, self.owner, self.lease_s,
                                                        progress=self._progress(job_id))
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - retried at the next beat
                    log.exception("job_lease_renewal_failed", job=job_id, owner=self.owner)
                    continue
                if not kept and job_id in self.held:
                    record = await self.store.get_job(job_id)
                    self._lose(job_id, record)

    def _progress(self, job_id: str) -> bytes | None:
        """The job's progress as stored with its lease (None: a job still being resumed
        keeps what is stored)."""
        job = self.jobs.get(job_id)
        if job is None or job.lost:
            return None
        return encode_progress(job.progress(), job.unique_requests)

    def _lose(self, job_id: str, record: JobRecord | None = None) -> None:
        """The store refused to renew the job's lease: stop it, write nothing more. When it
        was cancelled (through another coordinator), its watchers here see it end so."""
        self.held.discard(job_id)
        job = self.jobs.get(job_id)
        if job is None or job.state in TERMINAL:
            return  # it ended meanwhile (or is still being resumed: that notices by itself)
        job.lost = True
        self.scheduler.stop(job_id)
        if job.runner is not None:
            job.runner.cancel()
        if record is not None and record.state == cpb.EVALUATION_STATE_CANCELLED:
            log.info("job_cancelled_elsewhere", job=job_id, owner=self.owner)
            job.state, job.error = record.state, record.error
            job.publish("cancelled")
            return
        log.warning("job_lease_lost", job=job_id, owner=self.owner)
        job.publish("lease lost: another coordinator runs this job now")

    # -- following -----------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"evaluation '{job_id}' not found")
        return job

    async def watch(self, job_id: str) -> AsyncIterator[cpb.EvaluationEvent]:
        """Every event of the job so far, then new ones until it ends.

        A job this process does not run (a restarted coordinator before its claim, or another
        coordinator's job on a shared store) is followed from the store, polled, until it ends
        or this process takes it over; NOT_FOUND only for a job the store does not have.
        """
        last: tuple | None = None
        while True:
            job = self.jobs.get(job_id)
            if job is not None and not job.lost:
                async for event in self._watch_local(job):
                    yield event
                if not job.lost:
                    return
                continue
            record = await self.store.get_job(job_id)
            if record is None:
                raise NotFoundError(f"evaluation '{job_id}' not found")
            key = (record.state, record.error, record.owner)
            if key != last:
                last = key
                yield cpb.EvaluationEvent(id=record.id, state=record.state,
                                          progress=decode_progress(record.progress).progress,
                                          message=_stored_message(record, self.owner))
            if record.state in TERMINAL:
                return
            await asyncio.sleep(self.follow_poll_s)

    @staticmethod
    async def _watch_local(job: Job) -> AsyncIterator[cpb.EvaluationEvent]:
        queue: asyncio.Queue[cpb.EvaluationEvent] = asyncio.Queue()
        job.subscribers.append(queue)
        try:
            for event in list(job.history):
                yield event
            while job.state not in TERMINAL and not job.lost:
                event = await queue.get()
                yield event
            while not queue.empty():
                yield queue.get_nowait()
        finally:
            job.subscribers.remove(queue)

    async def cancel(self, job_id: str) -> Job | JobRecord:
        """Stop the job: no batch of it is sent once this returns.

        A job this process does not run (another coordinator's, on a shared store, or one
        waiting to be claimed) is marked CANCELLED in the store; its holder stops it at its
        next lease renewal (within ``lease_s / 3``). Returns the job, or its stored record.
        """
        job = self.jobs.get(job_id)
        if job is None or job.lost:
            record = await self.store.cancel_job(job_id, CANCELLED_ELSEWHERE)
            if record is None:
                record = await self.store.get_job(job_id)
            if record is None:
                raise NotFoundError(f"evaluation '{job_id}' not found")
            return record
        self.scheduler.stop(job_id)
        if job.state not in TERMINAL and job.runner is not None:
            job.runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.runner
        return job

    # -- running ---------------------------------------------------------------------------

    async def _set_state(self, job: Job, state: int, message: str, error: str = "") -> bool:
        """Compare-and-set the job's state in the store; False (and the job stopped) when this
        runner no longer holds it."""
        if job.lost:
            return False
        final = encode_progress(job.progress(), job.unique_requests) if state in TERMINAL \
            else None
        if await self.store.transition(job.id, self.owner, ACTIVE_STATES, state,
                                       error=error, progress=final) is None:
            log.warning("job_state_refused", job=job.id, state=state, owner=self.owner)
            job.lost = True
            self.held.discard(job.id)
            job.publish("refused by the store: another coordinator holds this job")
            return False
        job.state = state
        job.error = error
        if state in TERMINAL:
            self.held.discard(job.id)
            self.scheduler.metrics.job_ended(cpb.EvaluationState.Name(state))
        log.info("job_state", job=job.id, state=cpb.EvaluationState.Name(state),
                 owner=self.owner)
        job.publish(message)
        return True

    async def _run(self, job: Job) -> None:
        started = time.time()
        try:
            if not await self._set_state(job, cpb.EVALUATION_STATE_RUNNING, "running"):
                return
            await compute_missing(job, self.store, self.scheduler)
            await self._finish(job, started)
            await self._set_state(job, cpb.EVALUATION_STATE_SUCCEEDED, "succeeded")
        except asyncio.CancelledError:
            if job.lost:
                log.info("job_stopped", job=job.id, owner=self.owner,
                         reason="lease lost or handed back")
            else:
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
            self._retire(job)

    def _retire(self, job: Job) -> None:
        """A job whose run ended keeps only what ``GetEvaluation`` and watchers need (its
        plan, documents and dispatch are let go); the newest ``keep_finished`` such jobs stay
        in memory, older ones are forgotten here and answered from the store."""
        job.retire()
        if self.jobs.get(job.id) is not job:
            return  # a newer run of it (claimed again) took its place
        self._finished.pop(job.id, None)
        self._finished[job.id] = job
        while len(self._finished) > self.keep_finished:
            old_id = next(iter(self._finished))
            old = self._finished.pop(old_id)
            if self.jobs.get(old_id) is old:
                del self.jobs[old_id]

    async def _finish(self, job: Job, started: float) -> None:
        fingerprint = job.model_info.fingerprint
        answers = await self.store.get_answers(fingerprint, list(job.plan.work))
        parsed = job.parsed
        all_scores: list[TaskScores] = []
        for plan in job.plan.tasks:
            try:
                scorer = TaskScorer(plan.task, plan.docs, plan.requests, plan.request_ids,
                                    answers, allow_code=self.confirm_run_unsafe_code
                                    and parsed.spec.confirm_run_unsafe_code,
                                    samples=(parsed.samples or {}).get(plan.task.name))
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
        if not await self.scheduler.metrics.timed_write("results", self.store.put_results(
                job.id, self.owner, typed.SerializeToString(), json.dumps(doc))):
            self._lose(job.id)
            raise asyncio.CancelledError
        if parsed.spec.log_samples:
            records = [(s.task.name,
                        json.dumps(lmeval_sections.sanitize_sample(r), ensure_ascii=False))
                       for s in all_scores for r in s.samples]
            await self.scheduler.metrics.timed_write(
                "samples", self.store.put_samples(job.id, self.owner, records))
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


def _stored_message(record: JobRecord, owner: str) -> str:
    """The event message of a job followed from the store."""
    if record.state in TERMINAL:
        return "stored evaluation" + (f": {record.error}" if record.error else "")
    if record.error:  # e.g. "waiting for workers: ..."
        return record.error
    if record.owner and record.owner != owner:
        return f"run by coordinator {record.owner}"
    return "waiting to be claimed by a coordinator"
