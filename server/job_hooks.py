"""What a job does for the spec fields of lm_eval's remaining flags and for result sinks, kept
out of the planning and finishing code, which call these hooks:

- :func:`normalized_spec` (job creation): a copy of the spec where ``predict_only`` implies
  ``log_samples``; ``cache_requests`` and ``sinks`` are checked (INVALID_ARGUMENT naming the
  field).
- :func:`prepare_task` (planning): the job's :class:`TaskOverrides` (a value of its parsed
  spec) applied to a task built for it: ``predict_only`` replaces its metrics by ``bypass``.
- :func:`task_requests` (planning): a task's requests, through the request cache.
- :func:`finish_scores` (finishing): lm-eval's ``sample_len`` of a task without metric items.
- :func:`finishing_failed` (finishing): a clear job error for a failure after the compute.
- :func:`log_to_sinks` (finishing): log the stored results to the sinks the spec names.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from evalfleet.common.errors import EvalfleetError
from evalfleet.common.logging import get_logger
from evalfleet.server import request_cache
from evalfleet.server.spec import ParsedSpec, TaskOverrides
from evalfleet.tasks.protocol import EvalTask
from evalfleet.v1 import coordinator_pb2 as cpb

log = get_logger("job_hooks")


def normalized_spec(spec: cpb.EvaluationSpec, sinks: dict[str, Any] | None
                    ) -> cpb.EvaluationSpec:
    """A copy of ``spec`` with the fields handled here normalised and checked (``spec`` is
    left as it is)."""
    normalized = cpb.EvaluationSpec()
    normalized.CopyFrom(spec)
    if normalized.predict_only:
        normalized.log_samples = True
    request_cache.check_mode(normalized.cache_requests)
    if normalized.sinks:
        from evalfleet.reporting.sinks.config import check_requests

        check_requests(normalized.sinks, sinks)
    return normalized


def prepare_task(task: EvalTask, overrides: TaskOverrides) -> EvalTask:
    """The task as the job's overrides want it, ``task`` left as it is: ``predict_only`` gives
    a copy whose only metric is ``bypass`` (lm-eval's ``override_metric``; see
    :meth:`EvalTask.predicting_only`)."""
    return task.predicting_only() if overrides.predict_only else task


def start_planning(spec: cpb.EvaluationSpec) -> None:
    """``cache_requests=delete`` empties the request cache before anything is built."""
    if spec.cache_requests == "delete":
        request_cache.delete_cache()


def task_requests(task: EvalTask, parsed: ParsedSpec, samples: Sequence[int] | None,
                  chat: Any = None) -> request_cache.TaskRequests:
    """A task's requests, docs and split size (from the request cache when asked)."""
    return request_cache.build_task_requests(
        task, mode=parsed.spec.cache_requests, limit=parsed.limit, samples=samples,
        num_fewshot=parsed.num_fewshot, fewshot_seed=parsed.seeds["fewshot_seed"],
        system_instruction=parsed.spec.system_instruction or None,
        apply_chat_template=parsed.apply_chat_template, gen_kwargs=parsed.gen_kwargs or None,
        chat=chat, fewshot_as_multiturn=bool(parsed.fewshot_as_multiturn))


def finishing_failed(stage: str, answers: int, exc: BaseException) -> EvalfleetError:
    """A job error for a failure after every answer was computed: it names the stage and says
    that the answers are kept (a re-run of the fixed job computes none of them again)."""
    if isinstance(exc, EvalfleetError):
        return exc
    log.exception("job_finishing_failed", stage=stage)
    return EvalfleetError(
        f"{stage} failed after all {answers} model answers were computed: "
        f"{type(exc).__name__}: {exc}. The answers are kept in the coordinator's store; run "
        "the job again once this is fixed and none of them is recomputed")


def finish_scores(scores: Any) -> None:
    """lm-eval counts a task's ``sample_len`` from its metric items: 0 when it has none
    (a multiple-choice task under ``predict_only``)."""
    if not scores.items:
        scores.sample_len = 0


async def log_to_sinks(spec: cpb.EvaluationSpec, sinks: dict[str, Any] | None,
                       doc: dict[str, Any], records: Sequence[tuple[str, str]],
                       publish: Callable[[str], None]) -> None:
    """Log a finished job to the sinks its spec names; a failing sink is reported in the
    job's events and logs, and never fails the job (its results are already stored)."""
    if not spec.sinks:
        return
    from evalfleet.reporting.sinks.config import make_sink

    samples: dict[str, list[dict[str, Any]]] = {}
    for task, text in records:
        samples.setdefault(task, []).append(json.loads(text))
    for request in spec.sinks:
        config = (sinks or {}).get(request.name)
        if config is None:  # checked at creation; the configuration may have changed since
            publish(f"sink {request.name}: not configured on this coordinator")
            continue
        try:
            sink = await asyncio.to_thread(make_sink, config, request)
            await asyncio.to_thread(_log_and_finish, sink, doc, samples or None)
            where = getattr(sink, "run_id", None) or getattr(getattr(sink, "run", None), "id", "")
            publish(f"sink {request.name}: logged run {where}")
            log.info("sink_logged", sink=request.name, run=where)
        except Exception as exc:  # noqa: BLE001 - reported on the job, never fatal
            log.warning("sink_failed", sink=request.name, error=f"{type(exc).__name__}: {exc}")
            publish(f"sink {request.name} failed: {type(exc).__name__}: {exc}")


def _log_and_finish(sink: Any, doc: dict[str, Any],
                    samples: dict[str, list[dict[str, Any]]] | None) -> None:
    if hasattr(sink, "log_run"):
        sink.log_run(doc, samples)
    else:
        sink.log_results(doc)
        if samples:
            sink.log_samples(doc, samples)
    sink.finish()
