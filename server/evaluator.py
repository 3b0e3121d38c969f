"""Turn the workers' answers for one task into lm-eval's per-document metrics and aggregates.

The numeric work (log-likelihood sums, multiple-choice argmaxes, aggregation, standard errors)
is done by :mod:`evalfleet.scoring` on flat arrays; this module only arranges a task's answers
into those arrays, applies the task's filters and custom ``process_results``, and keeps the
per-document records lm-eval writes to its samples file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evalfleet import scoring
from evalfleet.tasks import Request, Task
from evalfleet.v1 import inference_pb2 as pb

#: Metrics of multiple-choice tasks computed by the vectorized kernel.
_MC_KERNEL_METRICS = ("acc", "acc_norm", "acc_bytes", "acc_mutual_info", "exact_match",
                      "brier_score")


@dataclass
class TaskScores:
    """Per-document metric items and aggregates of one task."""

    task: Task
    sample_len: int
    items: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    aggregates: dict[str, Any] = field(default_factory=dict)  # "acc,none" / "acc_stderr,none"
    samples: list[dict[str, Any]] = field(default_factory=list)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _decode_scores(blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten serialized ``TokenScores`` into (values, greedy flags, offsets)."""
    values: list[np.ndarray] = []
    greedy: list[np.ndarray] = []
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    for i, blob in enumerate(blobs):
        msg = pb.TokenScores.FromString(blob)
        values.append(np.asarray(msg.logprobs, dtype=np.float32))
        greedy.append(np.asarray(msg.greedy, dtype=np.bool_))
        offsets[i + 1] = offsets[i] + len(msg.logprobs)
    flat_values = np.concatenate(values) if values else np.zeros(0, np.float32)
    flat_greedy = np.concatenate(greedy) if greedy else np.zeros(0, np.bool_)
    return flat_values, flat_greedy, offsets


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
    """Scores one task from its requests, their content ids and the answers."""

    def __init__(self, task: Task, docs: Sequence[tuple[int, dict]], requests: Sequence[Request],
                 request_ids: Sequence[str], answers: Mapping[str, bytes]) -> None:
        self.task = task
        self.docs = list(docs)
        self.requests = list(requests)
        self.answer_ids = _expand_repeats(requests, request_ids)
        self.answers = answers
        self.by_doc = _by_doc(self.requests)
        self.metric_names = [m.name for m in task.metric_list]

    # -- per-document results -------------------------------------------------------------
    def _loglikelihood_results(self) -> tuple[np.ndarray, np.ndarray]:
        blobs = [self.answers[ids[0]] for ids in self.answer_ids]
        values, greedy, offsets = _decode_scores(blobs)
        return scoring.request_loglikelihoods(values, greedy, offsets)

    def score(self, *, log_samples: bool) -> TaskScores:
        out = TaskScores(task=self.task, sample_len=len(self.docs))
        kind = self.task.output_type
        if kind == "multiple_choice":
            per_doc, resps = self._score_multiple_choice()
        elif kind == "loglikelihood":
            per_doc, resps = self._score_loglikelihood()
        elif kind == "loglikelihood_rolling":
            per_doc, resps = self._score_rolling()
        elif kind == "generate_until":
            per_doc, resps = self._score_generation()
        else:  # pragma: no cover - the task engine validates output_type
            raise ValueError(f"unsupported output_type {kind}")
        for filter_name, doc_metrics in per_doc.items():
            for d, metrics in enumerate(doc_metrics):
                for metric, value in metrics.items():
                    out.items.setdefault((metric, filter_name), []).append(value)
                if log_samples:
                    out.samples.append(self._sample_record(d, filter_name, metrics,
                                                           resps[filter_name]))
        return out

    def _score_multiple_choice(self) -> tuple[dict[str, list[dict]], dict]:
        lls, is_greedy = self._loglikelihood_results()
        task, docs = self.task, self.docs
        choices = [task.doc_choices(doc) or [] for _, doc in docs]
        mutual = "acc_mutual_info" in self.metric_names
        cond_pos: list[int] = []
        uncond_pos: list[int] = []
        choice_offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        gold_values: list[int] = []
        gold_offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        for d, ((doc_id, doc), doc_choices) in enumerate(zip(docs, choices, strict=True)):
            positions = self.by_doc[doc_id]
            n = len(doc_choices)
            cond_pos.extend(positions[:n])
            if mutual:
                uncond_pos.extend(positions[n:2 * n])
            choice_offsets[d + 1] = choice_offsets[d] + n
            gold = task.doc_gold(doc)
            golds = list(gold) if isinstance(gold, list | tuple) else [gold]
            gold_values.extend(int(g) for g in golds)
            gold_offsets[d + 1] = gold_offsets[d] + len(golds)
        flat_choices = [c for cs in choices for c in cs]
        chars = np.array([float(len(c)) for c in flat_choices], dtype=np.float64)
        nbytes = np.array([float(len(c.encode("utf-8"))) for c in flat_choices], dtype=np.float64)
        cond = np.asarray(cond_pos, dtype=np.int64)
        kernel_metrics = [m for m in self.metric_names if m in _MC_KERNEL_METRICS]
        wanted = [*kernel_metrics, "pred"]
        computed = scoring.multiple_choice_metrics(
            lls[cond], is_greedy[cond], choice_offsets, np.asarray(gold_values, dtype=np.int64),
            gold_offsets, chars, nbytes, wanted,
            lls_unconditional=lls[np.asarray(uncond_pos, dtype=np.int64)] if mutual else None,
        )
        per_doc: list[dict[str, Any]] = []
        for d, (_, doc) in enumerate(docs):
            doc_lls = lls[self.by_doc[docs[d][0]]]
            doc_greedy = is_greedy[self.by_doc[docs[d][0]]]
            if task.process_results_fn is not None:
                results = [(float(ll), bool(g)) for ll, g in zip(doc_lls, doc_greedy, strict=True)]
                per_doc.append(dict(task.process_results_fn(doc, results)))
                continue
            metrics: dict[str, Any] = {}
            gold = gold_values[gold_offsets[d]:gold_offsets[d + 1]]
            for name in self.metric_names:
                if name in computed:
                    metrics[name] = float(computed[name][d])
                elif name in ("f1", "mcc"):
                    metrics[name] = (gold[0], int(computed["pred"][d]))
                elif name == "likelihood":
                    metrics[name] = (gold[0], doc_lls[: len(choices[d])].tolist())
            per_doc.append(metrics)
        resps = {"none": self._ll_resps(lls, is_greedy)}
        return {"none": per_doc}, resps

    def _ll_resps(self, lls: np.ndarray, is_greedy: np.ndarray) -> list[list]:
        return [[(float(lls[p]), bool(is_greedy[p])) for p in self.by_doc[doc_id]]
                for doc_id, _ in self.docs]

    def _score_loglikelihood(self) -> tuple[dict[str, list[dict]], dict]:
        lls, is_greedy = self._loglikelihood_results()
        per_doc = []
        for doc_id, doc in self.docs:
            pos = self.by_doc[doc_id][0]
            if self.task.process_results_fn is not None:
                per_doc.append(dict(self.task.process_results_fn(
                    doc, [(float(lls[pos]), bool(is_greedy[pos]))])))
                continue
            values = {"perplexity": float(lls[pos]), "acc": int(bool(is_greedy[pos]))}
            per_doc.append({m: values[m] for m in self.metric_names if m in values})
        return {"none": per_doc}, {"none": self._ll_resps(lls, is_greedy)}

    def _score_rolling(self) -> tuple[dict[str, list[dict]], dict]:
        lls, _ = self._loglikelihood_results()
        per_doc = []
        resps = []
        for doc_id, doc in self.docs:
            ll = float(lls[self.by_doc[doc_id][0]])
            resps.append([ll])
            if self.task.process_results_fn is not None:
                per_doc.append(dict(self.task.process_results_fn(doc, [ll])))
                continue
            target = self.task.doc_target(doc)
            words = scoring.count_words(target)
            nbytes = scoring.count_bytes(target)
            values = {"word_perplexity": (ll, words), "byte_perplexity": (ll, nbytes),
                      "bits_per_byte": (ll, nbytes)}
            per_doc.append({m: values[m] for m in self.metric_names if m in values})
        return {"none": per_doc}, {"none": resps}

    def _score_generation(self) -> tuple[dict[str, list[dict]], dict]:
        responses: list[list[str]] = []
        for doc_id, _ in self.docs:
            texts: list[str] = []
            for pos in self.by_doc[doc_id]:
                for rid in self.answer_ids[pos]:
                    texts.append(pb.Generation.FromString(self.answers[rid]).text)
            responses.append(texts)
        filtered = self.task.apply_filters(responses)
        per_filter: dict[str, list[dict]] = {}
        resps: dict[str, list] = {}
        for filter_name, values in filtered.items():
            rows = []
            for (_, doc), value in zip(self.docs, values, strict=True):
                if self.task.process_results_fn is not None:
                    rows.append(dict(self.task.process_results_fn(doc, [value])))
                    continue
                rows.append(self._generation_metrics(doc, value))
            per_filter[filter_name] = rows
            resps[filter_name] = [[v] for v in values]
        self._raw_generations = responses
        return per_filter, resps

    def _generation_metrics(self, doc: dict, prediction: Any) -> dict[str, Any]:
        task = self.task
        gold = task.doc_target(doc)
        choices = task.doc_choices(doc)
        if choices and isinstance(gold, int):
            gold = choices[gold]
        golds = [str(g) for g in gold] if isinstance(gold, list) else [str(gold)]
        metrics: dict[str, Any] = {}
        for config in task.metric_list:
            if config.name == "exact_match":
                scores = scoring.exact_match([str(prediction)] * len(golds), golds,
                                             **config.kwargs)
                metrics["exact_match"] = float(np.max(scores)) if len(scores) else 0.0
            elif config.name in ("bleu", "chrf", "ter"):
                metrics[config.name] = (golds, str(prediction))
            elif config.name == "bypass":  # --predict_only: lm-eval's bypass metric is None
                metrics["bypass"] = None
        return metrics

    # -- samples ------------------------------------------------------------------------------
    def _sample_record(self, d: int, filter_name: str, metrics: dict[str, Any],
                       resps_by_doc: list) -> dict[str, Any]:
        doc_id, doc = self.docs[d]
        positions = self.by_doc[doc_id]
        requests = [self.requests[p] for p in positions]
        target = self.task.doc_target(doc)
        arguments = {
            f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(req.arguments)}
            for i, req in enumerate(requests)
        }
        filtered = resps_by_doc[d]
        if self.task.output_type == "generate_until":
            raw = self._raw_generations[d]
            resps = [raw]
            filtered_out = [str(filtered[0])] if not isinstance(filtered[0], list) else filtered
        else:
            resps = [[list(map(str, r)) if isinstance(r, tuple) else [str(r)]] for r in filtered]
            filtered_out = [list(map(str, r)) if isinstance(r, tuple) else str(r)
                            for r in filtered]
        record = {
            "doc_id": doc_id,
            "doc": doc,
            "target": str(target),
            "arguments": arguments,
            "resps": resps,
            "filtered_resps": filtered_out,
            "filter": filter_name,
            "metrics": list(metrics.keys()),
            "doc_hash": _sha256(json.dumps(doc, indent=2, default=str, ensure_ascii=False)),
            "prompt_hash": _sha256(str(requests[0].arguments[0])),
            "target_hash": _sha256(str(target)),
        }
        record.update(metrics)
        return record


def aggregate_task(scores: TaskScores, bootstrap_iters: int) -> None:
    """Fill ``scores.aggregates`` with ``"<metric>,<filter>"`` values and their stderrs."""
    configs = {m.name: m for m in scores.task.metric_list}
    for (metric, filter_name), items in scores.items.items():
        config = configs.get(metric)
        aggregation = config.aggregation if config is not None else "mean"
        if aggregation is None:
            aggregation = "mean"
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
