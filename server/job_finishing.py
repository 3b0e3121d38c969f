"""Finishing a job once its answers are computed: every task scored, the results document and
samples stored, and the sinks the spec names logged to."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from evalfleet.server import job_hooks, lmeval_sections, usage
from evalfleet.server import results as results_mod
from evalfleet.server.evaluator import TaskScorer, TaskScores, aggregate_task
from evalfleet.server.job import Job
from evalfleet.server.scheduler import Scheduler
from evalfleet.server.store import JobStore
from evalfleet.v1 import coordinator_pb2 as cpb


class JobFinisher:
    """Scores a computed job and stores its results; ``lose(job_id)`` is called when the store
    refuses the results (another coordinator holds the job)."""

    def __init__(self, store: JobStore, scheduler: Scheduler, *, owner: str,
                 sinks: dict[str, Any] | None, confirm_run_unsafe_code: bool,
                 lose: Callable[[str], None]) -> None:
        self.store = store
        self.scheduler = scheduler
        self.owner = owner
        self.sinks = sinks
        self.confirm_run_unsafe_code = confirm_run_unsafe_code
        self._lose = lose

    async def finish(self, job: Job, started: float) -> None:
        """Score every task, store the results and samples, log to the sinks."""
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
                raise job_hooks.finishing_failed(f"scoring task '{plan.task.name}' "
                                                 f"({plan.task.task_file})", len(answers),
                                                 exc) from exc
            all_scores.append(scores)
        try:
            doc, typed = self.results_document(job, all_scores, started)
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
    def results_document(job: Job, all_scores: list[TaskScores], started: float
                          ) -> tuple[dict[str, Any], cpb.EvaluationResults]:
        """The lm-eval results document of a scored job and its typed message."""
        parsed = job.parsed
        doc = results_mod.build_results_json(
            scores=all_scores, groups=job.plan.groups, roots=job.plan.roots,
            n_shot={p.task.name: p.task.effective_num_fewshot for p in job.plan.tasks},
            original_sizes={p.task.name: p.original_size for p in job.plan.tasks},
            config=lmeval_sections.config_section(job),
            model_info=lmeval_sections.model_section(job),
            spec_extras={**lmeval_sections.chat_section(job), **usage.results_section(job)},
            started_at=started)
        if parsed.spec.log_samples:
            doc["task_hashes"] = lmeval_sections.task_hashes(all_scores)
        return doc, results_mod.typed_results(job.id, doc, job.positions_computed)
