"""Validation and planning of a job: its spec checked and parsed (once), its workers chosen,
its tasks loaded and its requests planned, with every refusal a clear status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from evalfleet.common.errors import FailedPreconditionError
from evalfleet.common.redact import redact_mapping, redact_spec
from evalfleet.common.request_kind import OutputType
from evalfleet.execution.policy import check_unsafe_code
from evalfleet.server import job_hooks
from evalfleet.server.access import AccessPolicy
from evalfleet.server.capabilities import check_batch_api, check_chat_only, check_request_kinds
from evalfleet.server.chat import (
    ChatRenderer,
    json_messages_renderer,
    require_chat_support,
    worker_renderer,
)
from evalfleet.server.planning import JobPlan, build_plan, load_tasks
from evalfleet.server.registry import WorkerRegistry
from evalfleet.server.spec import ParsedSpec, parse_spec
from evalfleet.server.worker_record import Worker
from evalfleet.tasks import TaskManager
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb


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


class JobSetup:
    """Turns a spec into a job's parsed spec, workers and plan (the runner's validation)."""

    def __init__(self, registry: WorkerRegistry, policy: AccessPolicy, *,
                 sinks: dict[str, Any] | None = None, data_dir: str | Path | None = None,
                 include_paths: Sequence[str] = (),
                 confirm_run_unsafe_code: bool = False) -> None:
        self.registry = registry
        self.policy = policy
        self.sinks = sinks
        self.data_dir = data_dir
        self.include_paths = list(include_paths)
        #: the operator's consent to run generated code (jobs must confirm it too)
        self.confirm_run_unsafe_code = confirm_run_unsafe_code
        #: one job's tasks are loaded and planned at a time: the dataset stack is not safe in
        #: concurrent threads (two concurrent CreateEvaluation calls failed with "type object
        #: 'tqdm' has no attribute '_lock'" from its progress bars)
        self._planning = asyncio.Lock()

    def task_manager(self, include_paths: Sequence[str] = ()) -> TaskManager:
        """The tasks this coordinator reads, with a client's ``include_paths`` (when the
        policy allows them)."""
        self.policy.check_include_paths(list(include_paths), "include_paths")
        return TaskManager(include_paths=[*self.include_paths, *include_paths],
                           data_dir=self.data_dir)

    def parse(self, spec: cpb.EvaluationSpec) -> ParsedSpec:
        """The spec checked, normalised and parsed, once; the caller's spec is left as it is.

        The parsed spec holds a normalised copy (see :func:`job_hooks.normalized_spec`) with
        its secrets hidden: that copy is what is stored, answered and planned with."""
        self.policy.check_size(spec)  # before parsing: a huge spec is refused unread
        normalized = job_hooks.normalized_spec(spec, self.sinks)
        parsed = parse_spec(normalized)
        self.policy.check_spec(normalized, parsed.model_args)
        # Secrets in model_args/metadata (api_key, ...) are hidden before the spec is stored,
        # answered or planned with: the workers use their own model_args, never the spec's.
        redact_spec(normalized)
        return replace(parsed, model_args=redact_mapping(parsed.model_args),
                       metadata=redact_mapping(parsed.metadata))

    async def select(self, spec: cpb.EvaluationSpec, parsed: ParsedSpec,
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

    async def plan(self, spec: cpb.EvaluationSpec, parsed: ParsedSpec,
                   workers: list[Worker]) -> JobPlan:
        """The job's tasks loaded and its requests planned, checked against the workers."""
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
        kinds = {name: OutputType(t.output_type) for name, t in tree.tasks.items()
                 if t.output_type is not None}  # a class task may learn it from its requests
        check_request_kinds(
            {name: {kind.request_kind} for name, kind in kinds.items()}, infos,
            multiple_choice={n for n, k in kinds.items() if k is OutputType.MULTIPLE_CHOICE},
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
