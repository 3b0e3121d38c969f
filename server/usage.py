"""What a job spent: tokens per task and per job, and their cost with a price table.

Counted on the coordinator as each batch computed for the job returns (``count_batch``), from
the usage its worker put on every answer (``TokenScores`` / ``Generation`` token fields: a
remote API's own usage, split evenly over the requests of a call that answered several; hf and
vllm count their generations with the tokenizer). The results document carries it in its own
section, beside lm-eval's (whose schema is kept)::

    "evalfleet_usage": {
      "tasks": {"arc_easy": {"requests": 40, "prompt_tokens": 2210, "cached_tokens": 0,
                             "completion_tokens": 40, "reasoning_tokens": 0, "cost": 0.00036},
                "gsm8k": {...}},
      "total": {... the same keys summed over the tasks ...},
      "currency": "USD",
      "price": {"model": "gpt-4o-mini", "input_per_million": 0.15, ..., "batch_api": false},
      "note": "..."
    }

Rules:

* Requests answered from the answer store are not counted again: an earlier job's answers
  cost this job nothing; this job's own, computed before a coordinator restart, were counted
  then and come back with its stored usage (below). ``requests`` is the number computed for
  this job.
* A request shared by several tasks (the same prompt: asked once) is counted once, for the
  first of them in the job's task order, so the tasks add up to the job's total.
* ``cost`` (and ``currency``, ``price``) appear only when the spec's price table has the job's
  model (by model_args ``model``, else ``pretrained``, else the worker's model name); a job
  whose model is missing gets ``note`` instead, never a guessed price. With model_args
  ``batch_api=true`` the table's ``batch_discount`` is applied.
* Tokens are 0 where the worker cannot know them (loglikelihood on hf/vllm).

Watch events carry the job's totals so far (``EvaluationEvent.usage``); ``GetEvaluation`` and
``ListEvaluations`` carry them and each task's (``Evaluation.usage``, ``task_usage``).

Across a coordinator restart: the job's per-task usage is stored with its progress
(``Evaluation.task_usage`` in ``JobRecord.progress``) with every lease renewal, when it ends,
and right after each batch's answers are stored and counted (:meth:`JobUsage.count_batch` calls
``on_change``; the lease keeper writes it at once, coalesced). A job resumed by a restarted or
another coordinator starts from the stored usage (:meth:`JobUsage.restore`), so its results
count what was computed before the restart once (those answers come from the store and count
nothing again) and what is computed after it. What can be missed: the answers of the batches
whose usage write had not reached the store when the coordinator was killed (the moments
between a batch's answer write and its usage write), and calls a worker had in flight at the
kill, which the provider answered (and billed) but whose answers died with the coordinator:
those are sent again after the restart and counted once, for the answer the job keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from evalfleet.common import price_table as prices
from evalfleet.common.request_kind import RequestKind
from evalfleet.server.store import AnswerSlices
from evalfleet.server.wire import ANSWER_MESSAGE
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

#: The results document's section name.
SECTION = "evalfleet_usage"
#: Token fields read from each answer (TokenScores has no reasoning_tokens: read as 0).
_TOKENS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")


@dataclass
class UsageCounts:
    """Requests computed and the tokens they used."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    def merge(self, other: UsageCounts) -> None:
        """Add ``other``'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        """The section's form of these counts."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class JobUsage:
    """A job's usage per task (by name), as its batches return."""

    tasks: dict[str, UsageCounts] = field(default_factory=dict)
    #: answer id -> index of the first task asking it (built once, for provider batches)
    _first: dict[str, int] | None = field(default=None, repr=False)
    #: called after each counted batch (the lease keeper stores the usage at once)
    on_change: Callable[[], None] | None = field(default=None, repr=False)

    @classmethod
    def restore(cls, stored: Iterable[cpb.TaskUsage]) -> JobUsage:
        """The usage a job's stored progress holds (``Evaluation.task_usage``; none: zero)."""
        usage = cls()
        for item in stored:
            counts = usage._task(item.task)
            counts.merge(UsageCounts(**{f.name: getattr(item.usage, f.name)
                                        for f in fields(UsageCounts)}))
        return usage

    def count_batch(self, kind: str, answers: AnswerSlices, owners: np.ndarray,
                    names: Sequence[str], worker_counted: bool) -> None:
        """Count a batch's freshly computed ``answers``; ``owners[i]`` is the index (into
        ``names``) of the task answer i is counted for. The answers are read only when the
        worker counted tokens (``worker_counted``: a remote API's usage, or generations)."""
        requests = np.bincount(owners[owners >= 0], minlength=len(names)).tolist()
        for name, n in zip(names, requests, strict=True):
            if n:
                self._task(name).requests += n
        if worker_counted:
            self._count_tokens(kind, answers, owners, names)
        if self.on_change is not None:
            self.on_change()

    def _count_tokens(self, kind: str, answers: AnswerSlices, owners: np.ndarray,
                      names: Sequence[str]) -> None:
        message = ANSWER_MESSAGE[kind]
        raw = answers.raw
        for owner, start, end in zip(owners.tolist(), answers.starts.tolist(),
                                     answers.ends.tolist(), strict=True):
            if owner < 0:
                continue
            answer = message.FromString(raw[start:end])
            counts = self._task(names[owner])
            for name in _TOKENS:
                setattr(counts, name, getattr(counts, name) + getattr(answer, name, 0))

    def _task(self, name: str) -> UsageCounts:
        counts = self.tasks.get(name)
        if counts is None:
            counts = self.tasks[name] = UsageCounts()
        return counts

    def forget_owners(self) -> None:
        """Let go of the answer-id index built for provider batches (a retired job counts no
        more batches; the index holds one entry per request of the job)."""
        self._first = None

    def total(self) -> UsageCounts:
        """The counts summed over the tasks."""
        out = UsageCounts()
        for counts in self.tasks.values():
            out.merge(counts)
        return out


def count_provider_batch(job: Any, kind: str, answers: AnswerSlices) -> None:
    """Count the answers a provider batch computed for ``job`` (a ``server.job.Job``), each for
    the first task that asks it, as :func:`dispatch.compute_missing` counts online batches."""
    from evalfleet.server.dispatch import task_owners  # dispatch imports this module

    usage = job.usage
    if usage._first is None:
        usage._first = task_owners(job)[0]
    owners = np.fromiter((usage._first.get(aid, -1) for aid in answers.ids), dtype=np.int64,
                         count=len(answers))
    usage.count_batch(kind, answers, owners, [p.task.name for p in job.plan.tasks], True)


def worker_counted(kind: str, cost: ipb.BatchCost) -> bool:
    """Whether a batch's answers carry token counts worth reading: generations (hf and vllm
    count them too) and anything a remote API reported usage for."""
    return kind == RequestKind.GENERATE_UNTIL or bool(cost.prompt_tokens or cost.completion_tokens)


@dataclass(frozen=True)
class Pricing:
    """How a job's usage is priced: its price row (None: not priced) and why not."""

    price: cpb.ModelPrice | None
    currency: str
    batch: bool
    model: str
    note: str = ""

    def cost(self, counts: UsageCounts) -> float | None:
        """What ``counts`` cost (None without a price)."""
        if self.price is None:
            return None
        return round(prices.cost_of(counts.prompt_tokens, counts.cached_tokens,
                                    counts.completion_tokens, self.price, self.batch), 10)


def job_pricing(spec: cpb.EvaluationSpec, model_args: dict[str, Any],
                worker_model_name: str) -> Pricing:
    """The pricing of a job: its model's row in the spec's price table, if any."""
    model = prices.job_model_name(model_args, worker_model_name)
    batch = prices.uses_batch_api(model_args)
    table = spec.price_table
    if not table.models:
        return Pricing(None, "", batch, model)
    row = prices.find_price(table, model)
    if row is None:
        source = f" ({table.source})" if table.source else ""
        known = ", ".join(p.model for p in table.models[:5])
        return Pricing(None, "", batch, model,
                       f"no price for model '{model}' in the price table{source} (it has: "
                       f"{known}): usage is reported without a cost")
    return Pricing(row, table.currency, batch, model)


def _with_cost(counts: UsageCounts, pricing: Pricing) -> dict[str, Any]:
    out: dict[str, Any] = counts.as_dict()
    cost = pricing.cost(counts)
    if cost is not None:
        out["cost"] = cost
    return out


def usage_section(usage: JobUsage, task_names: Sequence[str], pricing: Pricing
                  ) -> dict[str, Any]:
    """The ``evalfleet_usage`` section: every task of the job (in its order), the total and,
    when priced, the currency and the price used (else the note, when there is one)."""
    tasks = {name: _with_cost(usage.tasks.get(name, UsageCounts()), pricing)
             for name in task_names}
    section: dict[str, Any] = {"tasks": tasks, "total": _with_cost(usage.total(), pricing)}
    if pricing.price is not None:
        p = pricing.price
        section["currency"] = pricing.currency
        section["price"] = {
            "model": p.model, "input_per_million": p.input_per_million,
            "cached_input_per_million": p.cached_input_per_million
            if p.HasField("cached_input_per_million") else p.input_per_million,
            "output_per_million": p.output_per_million, "batch_discount": p.batch_discount,
            "batch_api": pricing.batch}
    elif pricing.note:
        section["note"] = pricing.note
    return section


def results_section(job: Any) -> dict[str, Any]:
    """``{SECTION: the section}`` of a scored job (a ``server.job.Job``)."""
    names = [p.task.name for p in job.plan.tasks]
    return {SECTION: usage_section(job.usage, names, job.pricing)}


def _token_usage(counts: UsageCounts, pricing: Pricing | None) -> cpb.TokenUsage:
    msg = cpb.TokenUsage(**counts.as_dict())
    cost = pricing.cost(counts) if pricing is not None else None
    if cost is not None:
        msg.cost = cost
        msg.currency = pricing.currency
    return msg


def usage_event(usage: JobUsage, pricing: Pricing | None) -> cpb.TokenUsage:
    """The job's totals so far, as Watch events carry them."""
    return _token_usage(usage.total(), pricing)


def task_usage(usage: JobUsage, task_names: Sequence[str], pricing: Pricing | None
               ) -> list[cpb.TaskUsage]:
    """Each task's usage so far, in ``task_names``' order (``Evaluation.task_usage``, also
    what the store keeps for a restart); a task counted but not named (a job's plan not
    known, e.g. retired) follows them."""
    named = set(task_names)
    names = [*task_names, *(n for n in usage.tasks if n not in named)]
    return [cpb.TaskUsage(task=name, usage=_token_usage(usage.tasks.get(name, UsageCounts()),
                                                        pricing)) for name in names]
