"""A job in memory: its plan, state, progress and the events its watchers receive.

A job whose run ended is *retired* (:meth:`Job.retire`): it lets go of its plan (tasks,
documents, requests) and dispatch, and keeps only what ``GetEvaluation`` and late watchers
need (spec, state, final progress, first and latest events); its results are in the store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from evalfleet.server.planning import JobPlan
from evalfleet.server.spec import ParsedSpec
from evalfleet.server.store.base import decode_progress, encode_progress
from evalfleet.server.usage import JobUsage, Pricing, job_pricing, task_usage, usage_event
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

TERMINAL = {cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED,
            cpb.EVALUATION_STATE_CANCELLED}
#: Events kept per job for watchers that subscribe late (the first is always kept).
MAX_HISTORY = 1000
#: Events waiting for one watcher that reads slowly (or not at all): beyond this the oldest
#: waiting ones are dropped (progress is cumulative: the newest events say it all).
MAX_QUEUED_EVENTS = 256
#: Events a finished (retired) job keeps for late watchers: its first and its latest ones.
RETIRED_HISTORY = 32


def now() -> Timestamp:
    """The current time as a protobuf timestamp."""
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


@dataclass
class Job:
    """A job in memory: its plan, progress and the subscribers watching it."""

    id: str
    parsed: ParsedSpec
    plan: JobPlan | None  # None once retired
    model_info: ipb.ModelInfo
    state: int = cpb.EVALUATION_STATE_QUEUED
    error: str = ""
    created_at: Timestamp = field(default_factory=now)
    updated_at: Timestamp = field(default_factory=now)
    done: dict[str, int] = field(default_factory=dict)
    cost: ipb.BatchCost = field(default_factory=ipb.BatchCost)
    subscribers: list[asyncio.Queue] = field(default_factory=list)
    history: list[cpb.EvaluationEvent] = field(default_factory=list)
    runner: asyncio.Task | None = None
    allowed: set[str] | None = None  # spec.worker_addresses, when the job names its workers
    served_by: set[str] = field(default_factory=set)  # workers that answered its batches
    dispatch: Any = None  # its scheduler.JobDispatch while it computes
    #: This process no longer holds the job's lease (another coordinator took it, or it was
    #: handed back at shutdown): it is stopped and its state is no longer written from here.
    lost: bool = False
    usage: JobUsage = field(default_factory=JobUsage)  # tokens spent, per task (server.usage)
    _pricing: Pricing | None = field(default=None, repr=False)
    _groups: dict[str, str] | None = field(default=None, repr=False)
    #: what a retired job keeps of its plan: its final progress and its unique requests
    _final_progress: list[cpb.TaskProgress] = field(default_factory=list, repr=False)
    _unique_requests: int = field(default=0, repr=False)
    _task_names: list[str] = field(default_factory=list, repr=False)

    @property
    def unique_requests(self) -> int:
        """Distinct requests the job asks (kept when it is retired)."""
        return self._unique_requests if self.plan is None else len(self.plan.work)

    def retire(self) -> None:
        """Let go of what only a running job needs: its plan (tasks and their documents,
        requests, chat renderer), its dispatch, and its events but the first and the latest
        (:data:`RETIRED_HISTORY` in all). Its spec, state, error, counts and final progress
        stay, for ``GetEvaluation``, ``ListEvaluations`` and late watchers; its results and
        samples are in the store."""
        if self.plan is None:
            return
        self._final_progress = self.progress()
        self._unique_requests = len(self.plan.work)
        self._task_names = self.task_names()
        self.plan = None
        self.dispatch = None
        self._groups = None
        self.usage.forget_owners()
        del self.history[1:max(1, len(self.history) - RETIRED_HISTORY + 1)]

    @property
    def pricing(self) -> Pricing:
        """How the job's usage is priced (its model's row in the spec's price table)."""
        if self._pricing is None:
            self._pricing = job_pricing(self.parsed.spec, self.parsed.model_args,
                                        self.model_info.model_name)
        return self._pricing

    @property
    def positions_computed(self) -> int:
        """Model positions the workers computed for this job."""
        return self.cost.positions_computed

    def task_names(self) -> list[str]:
        """The job's tasks, in order (kept when it is retired)."""
        return self._task_names if self.plan is None else [p.task.name for p in self.plan.tasks]

    def task_usage(self) -> list[cpb.TaskUsage]:
        """Each task's usage so far (and cost), in task order."""
        return task_usage(self.usage, self.task_names(), self.pricing)

    def restore_usage(self, stored: bytes | None) -> None:
        """Start from the usage a stored progress holds (``stored_progress`` of an earlier
        run of this job, before a coordinator restart; none: zero)."""
        self.usage = JobUsage.restore(decode_progress(stored).task_usage)

    def stored_progress(self) -> bytes:
        """What the store keeps of the job's progress (``JobRecord.progress``): per task done
        and usage, and its distinct requests; a resumed job's usage starts from it."""
        return encode_progress(self.progress(), self.unique_requests, self.task_usage(),
                               usage_event(self.usage, self.pricing))

    def progress(self) -> list[cpb.TaskProgress]:
        """Requests and documents done per task, each with the group asked for it folds into."""
        if self.plan is None:
            return list(self._final_progress)
        groups = self._root_groups()
        out = []
        for p in self.plan.tasks:
            name, done, total = p.task.name, self.done.get(p.task.name, 0), len(p.answer_ids)
            docs = len(p.docs)
            docs_done = docs if done >= total else done * docs // max(total, 1)
            out.append(cpb.TaskProgress(task=name, done=done, total=total, docs_total=docs,
                                        docs_done=docs_done, group=groups.get(name, "")))
        return out

    def _root_groups(self) -> dict[str, str]:
        """Leaf task -> the group among the job's roots that holds it (computed once)."""
        if self._groups is None:
            by_name = {g.name: g for g in self.plan.groups}
            self._groups = {leaf: root for root in reversed(self.plan.roots)
                            if root in by_name for leaf in by_name[root].leaves}
        return self._groups

    def to_proto(self) -> cpb.Evaluation:
        """The job as ``GetEvaluation`` answers it: state, progress and usage so far."""
        return cpb.Evaluation(id=self.id, state=self.state, spec=self.parsed.spec,
                              progress=self.progress(), error=self.error,
                              created_at=self.created_at, updated_at=self.updated_at,
                              unique_requests=self.unique_requests,
                              usage=usage_event(self.usage, self.pricing),
                              task_usage=self.task_usage())

    def publish(self, message: str) -> None:
        """Record an event and hand it to every watcher."""
        self.updated_at = now()
        event = cpb.EvaluationEvent(id=self.id, state=self.state, progress=self.progress(),
                                    message=message, time=self.updated_at,
                                    usage=usage_event(self.usage, self.pricing))
        self.history.append(event)
        if len(self.history) > MAX_HISTORY:
            del self.history[1:len(self.history) - MAX_HISTORY + 1]
        for queue in self.subscribers:
            while queue.qsize() >= MAX_QUEUED_EVENTS:
                queue.get_nowait()
            queue.put_nowait(event)
