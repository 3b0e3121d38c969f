"""Turn the workers' answers for one task into lm-eval's per-document metrics and aggregates.

The steps are lm-eval 0.4.13's: every request's responses (one per repeat) go through each of
the task's filter pipelines, together with the request's document; per document and filter the
filtered values are scored, by the task's own ``process_results`` when it has one (YAML
``process_results`` or a Python class task), else by the metric group the one registry
(``evalfleet.scoring.registry``) holds for its output type: the registry says how each metric
is computed, this module names none. The numeric work
(loglikelihood sums, multiple-choice argmaxes, aggregation, standard errors) is done by
:mod:`evalfleet.scoring` on flat arrays; code metrics run every program of the task at
once through :mod:`evalfleet.execution`, in parallel subprocesses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evalfleet import scoring
from evalfleet.common.request_kind import RequestKind
from evalfleet.scoring.doc_batch import DocBatch
from evalfleet.scoring.registry import group_for
from evalfleet.server.generation_stats import GenerationStats
from evalfleet.tasks import Request, Task
from evalfleet.tasks.metric_config import MetricConfig
from evalfleet.v1 import inference_pb2 as pb


@dataclass
class TaskScores:
    """Per-document metric items and aggregates of one task."""

    task: Task
    sample_len: int
    items: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    #: "<metric>,<filter>" and "<metric>_stderr,<filter>" -> value
    aggregates: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: metric key -> its config, including the keys a dict-valued metric expands into
    configs: dict[str, MetricConfig] = field(default_factory=dict)
    #: length limits, unfinished thinking and token usage of the generations (None: no
    #: generate_until requests)
    generation: GenerationStats | None = None

    @property
    def higher_is_better(self) -> dict[str, Any]:
        """Direction of every metric the task declared or produced."""
        out = {m.name: m.higher_is_better for m in self.task.metric_list}
        out.update({k: c.higher_is_better for k, c in self.configs.items()})
        return out


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sanitize_list(value: Any) -> Any:
    """lm-eval's ``sanitize_list``: nested lists/tuples kept, every leaf ``str()``."""
    if isinstance(value, list):
        return [sanitize_list(v) for v in value]
    if isinstance(value, tuple):
        return tuple(sanitize_list(v) for v in value)
    return str(value)


def _decode_scores(blobs: Sequence[bytes]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Flatten serialized ``TokenScores`` into (values, greedy flags, offsets, backend totals).

    The totals are NaN where a backend sent none (None when no answer has one)."""
    values: list[np.ndarray] = []
    greedy: list[np.ndarray] = []
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    totals = np.full(len(blobs), np.nan)
    for i, blob in enumerate(blobs):
        msg = pb.TokenScores.FromString(blob)
        values.append(np.asarray(msg.logprobs, dtype=np.float32))
        greedy.append(np.asarray(msg.greedy, dtype=np.bool_))
        offsets[i + 1] = offsets[i] + len(msg.logprobs)
        if msg.HasField("total"):
            totals[i] = msg.total
    flat_values = np.concatenate(values) if values else np.zeros(0, np.float32)
    flat_greedy = np.concatenate(greedy) if greedy else np.zeros(0, np.bool_)
    has_total = ~np.isnan(totals)
    return flat_values, flat_greedy, offsets, (totals if has_total.any() else None)


def _by_doc(requests: Sequence[Request]) -> dict[int, list[int]]:
    """Positions of each document's requests, sorted by request index (as lm-eval sorts)."""
    grouped: dict[int, list[int]] = {}
    for pos, req in enumerate(requests):
        grouped.setdefault(req.doc_id, []).append(pos)
    for positions in grouped.values():
        positions.sort(key=lambda p: requests[p].idx)
    return grouped


def _expand_repeats(requests: Sequence[Request], ids: Sequence[str]) -> list[list[str]]:
    """The answer ids of each request, one per repeat."""
    out = []
    for req, rid in zip(requests, ids, strict=True):
        out.append([rid] if req.repeats <= 1 else [f"{rid}#{r}" for r in range(req.repeats)])
    return out


class TaskScorer:
    """Scores one task from its requests, their content ids and the answers.

    ``allow_code`` lets code metrics run generated programs; the coordinator sets it
    only for jobs confirmed by both its operator and the job.
    """

    def __init__(self, task: Task, docs: Sequence[tuple[int, dict]], requests: Sequence[Request],
                 request_ids: Sequence[str], answers: Mapping[str, bytes], *,
                 allow_code: bool = False, samples: Sequence[int] | None = None) -> None:
        self.task = task
        self.docs = list(docs)
        #: the job's ``--samples`` indices of this task, as given: a samples record's doc_id is
        #: ``samples[rank]``, as lm-eval 0.4.13 writes it (``doc_id_true = indices[doc_id]``)
        self.samples = list(samples) if samples else None
        self.requests = list(requests)
        self.answer_ids = _expand_repeats(requests, request_ids)
        self.answers = answers
        self.by_doc = _by_doc(self.requests)
        self.allow_code = allow_code
        self.configs: dict[str, MetricConfig] = {m.name: m for m in task.metric_list}
        #: per request, the reasoning of each repeat's generation (filled by _responses)
        self.reasoning: list[list[str]] = [[] for _ in self.requests]
        self.generation: GenerationStats | None = None

    # -- responses ------------------------------------------------------------------------
    def _responses(self) -> list[list[Any]]:
        """Per request, one response per repeat: ``(ll, is_greedy)`` for loglikelihood, ``ll``
        for rolling, the text for generation (lm-eval's ``Instance.resps``)."""
        out: list[list[Any]] = [[] for _ in self.requests]
        scored = [(p, aid) for p, req in enumerate(self.requests)
                  if req.request_type != RequestKind.GENERATE_UNTIL for aid in self.answer_ids[p]]
        if scored:
            values, greedy, offsets, totals = _decode_scores(
                [self.answers[a] for _, a in scored])
            lls, is_greedy = scoring.request_loglikelihoods(values, greedy, offsets, totals)
            for (pos, _), ll, g in zip(scored, lls, is_greedy, strict=True):
                if self.requests[pos].request_type == RequestKind.LOGLIKELIHOOD_ROLLING:
                    out[pos].append(float(ll))
                else:
                    out[pos].append((float(ll), bool(g)))
        for pos, req in enumerate(self.requests):
            if req.request_type == RequestKind.GENERATE_UNTIL:
                generations = [pb.Generation.FromString(self.answers[a])
                               for a in self.answer_ids[pos]]
                self.generation = self.generation or GenerationStats()
                for generation in generations:
                    self.generation.add(generation)
                # an answer that ended inside its thinking arrives with empty text: no answer
                out[pos] = [g.text for g in generations]
                self.reasoning[pos] = [g.reasoning for g in generations]
        return out

    # -- scoring ----------------------------------------------------------------------------
    def score(self, *, log_samples: bool) -> TaskScores:
        out = TaskScores(task=self.task, sample_len=len(self.docs))
        resps = self._responses()
        doc_of = {doc_id: doc for doc_id, doc in self.docs}
        request_docs = [doc_of[req.doc_id] for req in self.requests]
        filtered = self.task.apply_filters(resps, request_docs)
        for filter_name, values in filtered.items():
            per_doc = self._score_filter(values)
            for d, metrics in enumerate(per_doc):
                for metric, value in metrics.items():
                    out.items.setdefault((metric, filter_name), []).append(value)
                if log_samples:
                    out.samples.append(self._sample_record(d, filter_name, metrics, resps,
                                                           values))
        out.configs = self.configs
        out.generation = self.generation
        return out

    def _results(self, values: Sequence[Any]) -> list[list[Any]]:
        """Per document, the filtered value of each of its requests (lm-eval's ``results``)."""
        return [[values[p] for p in self.by_doc[doc_id]] for doc_id, _ in self.docs]

    def _score_filter(self, values: Sequence[Any]) -> list[dict[str, Any]]:
        """Per document, its metrics: the task's own ``process_results``, else the metric
        group of its output type (the registry says how each metric is computed)."""
        task = self.task
        per_doc_results = self._results(values)
        if task.process_results_fn is not None:
            return [dict(task.process_results_fn(doc, results))
                    for (_, doc), results in zip(self.docs, per_doc_results, strict=True)]
        batch = DocBatch(task, [doc for _, doc in self.docs], per_doc_results,
                         allow_code=self.allow_code)
        rows: list[dict[str, Any]] = [{} for _ in self.docs]
        for config, column in group_for(task.output_type).compute(batch, task.metric_list):
            for row, value in zip(rows, column, strict=True):
                if isinstance(value, dict):  # one function giving several metrics (lm-eval)
                    for key, v in value.items():
                        row[key] = v
                        self.configs.setdefault(key, config)  # type: ignore[arg-type]
                else:
                    row[config.name] = value
        return rows

    # -- samples ----------------------------------------------------------------------------
    def _sample_record(self, d: int, filter_name: str, metrics: dict[str, Any],
                       resps: Sequence[list[Any]], values: Sequence[Any]) -> dict[str, Any]:
        """lm-eval's samples record, in the shapes its ``save_results_samples`` writes:
        ``resps`` is requests x repeats x response, ``filtered_resps`` one value per request,
        every leaf a string."""
        doc_id, doc = self.docs[d]
        positions = self.by_doc[doc_id]
        requests = [self.requests[p] for p in positions]
        target = self.task.doc_target(doc)
        arguments = {
            f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(req.arguments)}
            for i, req in enumerate(requests)
        }
        record = {
            "doc_id": self.samples[doc_id] if self.samples else doc_id,
            "doc": doc,
            "target": str(target),
            "arguments": arguments,
            "resps": sanitize_list([resps[p] for p in positions]),
            "filtered_resps": sanitize_list([values[p] for p in positions]),
            "filter": filter_name,
            "metrics": list(metrics.keys()),
            "doc_hash": _sha256(json.dumps(doc, indent=2, default=str, ensure_ascii=False)),
            "prompt_hash": _sha256(str(requests[0].arguments[0])),
            "target_hash": _sha256(str(target)),
        }
        reasoning = [self.reasoning[p] for p in positions]
        if any(text for texts in reasoning for text in texts):  # requests x repeats, as resps
            record["reasoning"] = reasoning
        record.update(metrics)
        return record


def aggregate_task(scores: TaskScores, bootstrap_iters: int) -> None:
    """Fill ``scores.aggregates`` with ``"<metric>,<filter>"`` values and their stderrs."""
    configs = {m.name: m for m in scores.task.metric_list}
    configs.update(scores.configs)
    for (metric, filter_name), items in scores.items.items():
        config = configs.get(metric)
        aggregation = config.aggregation if config is not None else "mean"
        if aggregation is None:
            aggregation = "mean"
        if callable(aggregation):
            named = scoring.aggregation_for_callable(aggregation)
            aggregation = named if named is not None else aggregation
        if callable(aggregation):
            value = aggregation(items)
            stderr: Any = "N/A"
        else:
            value = scoring.aggregate(aggregation, items)
            stderr = (scoring.stderr(aggregation, items, bootstrap_iters)
                      if len(items) > 1 else "N/A")
            if stderr is None:
                stderr = "N/A"
        scores.aggregates[f"{metric},{filter_name}"] = value
        scores.aggregates[f"{metric}_stderr,{filter_name}"] = stderr
