"""Score a task from made-up model answers on both sides, evalfleet's TaskScorer and lm-eval
0.4.13's ConfigurableTask (filters, process_results, aggregation), with no model involved."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalfleet.common.ids import request_id
from evalfleet.server.evaluator import TaskScorer, TaskScores, aggregate_task
from evalfleet.tasks import TaskManager
from evalfleet.v1 import inference_pb2 as pb


def write_task(folder: Path, name: str, yaml_text: str, rows: Sequence[dict],
               utils: str | None = None) -> Path:
    """A task folder: ``<name>.yaml`` reading ``<name>.jsonl`` as its test split."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    header = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
              f"    test: {data}\ntest_split: test\n")
    (folder / f"{name}.yaml").write_text(header + yaml_text)
    if utils is not None:
        (folder / "utils.py").write_text(utils)
    return folder


def _answer(request_type: str, response: Any) -> bytes:
    if request_type == "generate_until":
        return pb.Generation(text=response).SerializeToString()
    ll, greedy = response if isinstance(response, tuple) else (response, False)
    return pb.TokenScores(logprobs=[ll], greedy=[greedy]).SerializeToString()


def score_evalfleet(folder: Path, name: str, responses: Sequence[Any], *,
                    bootstrap_iters: int = 0, allow_code: bool = False) -> TaskScores:
    """evalfleet's scores when request ``i`` is answered with ``responses[i]`` (a text for
    generation, ``(ll, is_greedy)`` or ``ll`` otherwise)."""
    task = TaskManager(include_paths=[folder], include_builtin=False).load([name]).tasks[name]
    requests = task.build_requests()
    docs = task.eval_docs()
    ids = [request_id(r.request_type, r.arguments) for r in requests]
    answers = {rid: _answer(r.request_type, resp)
               for r, rid, resp in zip(requests, ids, responses, strict=True)}
    scores = TaskScorer(task, docs, requests, ids, answers, allow_code=allow_code).score(
        log_samples=True)
    aggregate_task(scores, bootstrap_iters)
    return scores


def score_lmeval(folder: Path, name: str, responses: Sequence[Any]) -> dict[str, Any]:
    """lm-eval's per-document metrics (``{(metric, filter): [values]}``), the filtered values,
    the aggregates and the samples records (as its samples file holds them), for the same
    responses."""
    from lm_eval.tasks import TaskManager as LmTaskManager

    manager = LmTaskManager(include_path=str(folder), include_defaults=False)
    task = manager.load([name])["tasks"][name]
    task.build_all_requests()
    instances = sorted(task.instances, key=lambda i: (i.doc_id, i.idx))
    for inst, resp in zip(instances, responses, strict=True):
        inst.resps = [resp]
    task.apply_filters()
    from lm_eval.utils import sanitize_list

    items: dict[tuple[str, str], list] = {}
    filtered: dict[str, list] = {}
    records: list[dict] = []
    for key in instances[0].filtered_resps:
        for doc_id, doc in task.doc_iterator():
            reqs = [i for i in instances if i.doc_id == doc_id]
            values = [i.filtered_resps[key] for i in reqs]
            filtered.setdefault(key, []).extend(values)
            metrics = task.process_results(doc, values)
            for metric, value in metrics.items():
                items.setdefault((metric, key), []).append(value)
            # what lm-eval's save_results_samples writes (tuples become JSON lists)
            records.append(json.loads(json.dumps({
                "doc_id": doc_id, "filter": key, "metrics": list(metrics),
                "resps": sanitize_list([i.resps for i in reqs]),
                "filtered_resps": sanitize_list(values)})))
    aggregates = {f"{m},{f}": task.aggregation()[m](v) for (m, f), v in items.items()}
    return {"items": items, "filtered": filtered, "aggregates": aggregates, "records": records}
