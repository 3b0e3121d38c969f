"""A job in memory: its plan, state, progress and the events its watchers receive."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from evalfleet.server.planning import JobPlan
from evalfleet.server.spec import ParsedSpec
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

TERMINAL = {cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED,
            cpb.EVALUATION_STATE_CANCELLED}
#: Events kept per job for watchers that subscribe late (the first is always kept).
MAX_HISTORY = 1000


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
    plan: JobPlan
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
    _groups: dict[str, str] | None = field(default=None, repr=False)

    @property
    def positions_computed(self) -> int:
        """Model positions the workers computed for this job."""
        return self.cost.positions_computed

    def progress(self) -> list[cpb.TaskProgress]:
        """Requests and documents done per task, each with the group asked for it folds into."""
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
        return cpb.Evaluation(id=self.id, state=self.state, spec=self.parsed.spec,
                              progress=self.progress(), error=self.error,
                              created_at=self.created_at, updated_at=self.updated_at,
                              unique_requests=len(self.plan.work))

    def publish(self, message: str) -> None:
        """Record an event and hand it to every watcher."""
        self.updated_at = now()
        event = cpb.EvaluationEvent(id=self.id, state=self.state, progress=self.progress(),
                                    message=message, time=self.updated_at)
        self.history.append(event)
        if len(self.history) > MAX_HISTORY:
            del self.history[1:len(self.history) - MAX_HISTORY + 1]
        for queue in self.subscribers:
            queue.put_nowait(event)
