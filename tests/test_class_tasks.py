"""Tasks written as Python classes (YAML ``class: !function``): a class written against lm-eval
0.4.13's ``Task`` API gives lm-eval's requests and metrics; the seed's lm-eval 0.3-style
CustomTask runs after changing only its import line, which lm-eval 0.4.13 cannot do."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest
from conftest import run_evaluation

from evalfleet.common.ids import request_id
from evalfleet.server.evaluator import TaskScorer, aggregate_task
from evalfleet.tasks import TaskError, TaskManager
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as pb

QUESTIONS = [("Capital of France?", ["Paris", "Rome", "Oslo"], 0),
             ("Largest planet?", ["Mars", "Jupiter", "Venus"], 1),
             ("H2O is?", ["salt", "air", "water"], 2),
             ("Fastest land animal?", ["cheetah", "snail", "cow"], 0),
             ("Colour of grass?", ["red", "green", "blue"], 1),
             ("Opposite of hot?", ["warm", "tepid", "cold"], 2)]

LMEVAL_CLASSES = '''\
import os

import datasets
import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.api.metrics import f1_score, mean
from lm_eval.api.task import Task

HERE = os.path.dirname(os.path.abspath(__file__))


class _Local(Task):
    VERSION = 2
    DATASET_PATH = "json"

    def download(self, data_dir=None, cache_dir=None, download_mode=None):
        self.dataset = datasets.load_dataset("json", data_files={
            "train": os.path.join(HERE, "train.jsonl"), "test": os.path.join(HERE, "test.jsonl")})

    def has_training_docs(self):
        return True

    def has_validation_docs(self):
        return False

    def has_test_docs(self):
        return True

    def training_docs(self):
        return self.dataset["train"]

    def test_docs(self):
        return self.dataset["test"]

    def doc_to_text(self, doc):
        return f"Q: {doc['question']}\\nA:"

    def doc_to_target(self, doc):
        return " " + doc["choices"][doc["label"]]


class CapitalsMC(_Local):
    def construct_requests(self, doc, ctx, **kwargs):
        kwargs.pop("apply_chat_template", None)
        kwargs.pop("chat_template", None)
        return [Instance(request_type="loglikelihood", doc=doc, arguments=(ctx, " " + c),
                         idx=i, **kwargs) for i, c in enumerate(doc["choices"])]

    def process_results(self, doc, results):
        pred = int(np.argmax([r[0] for r in results]))
        return {"acc": float(pred == doc["label"]), "f1": (int(doc["label"] == 1), int(pred == 1))}

    def aggregation(self):
        return {"acc": mean, "f1": f1_score}

    def higher_is_better(self):
        return {"acc": True, "f1": True}


class CapitalsGen(_Local):
    def construct_requests(self, doc, ctx, **kwargs):
        kwargs.pop("apply_chat_template", None)
        kwargs.pop("chat_template", None)
        return Instance(request_type="generate_until", doc=doc,
                        arguments=(ctx, {"until": ["\\n"], "max_gen_toks": 8}), idx=0, **kwargs)

    def process_results(self, doc, results):
        return {"exact": float(results[0].strip() == doc["choices"][doc["label"]])}

    def aggregation(self):
        return {"exact": mean}

    def higher_is_better(self):
        return {"exact": True}


class CapitalsGenOld(CapitalsGen):
    def construct_requests(self, doc, ctx, metadata=None):
        # an older signature: no **kwargs for apply_chat_template / chat_template
        return Instance(request_type="generate_until", doc=doc,
                        arguments=(ctx, {"until": ["\\n"], "max_gen_toks": 8}), idx=0,
                        metadata=metadata)
'''

SEED_CUSTOM_TASK = '''\
# custom_task.py
from lm_eval.api.task import Task
from lm_eval.api.metrics import mean

class CustomTask(Task):
    VERSION = 0
    DATASET_PATH = "path/to/your/dataset"
    DATASET_NAME = "custom_dataset"
    
    def has_training_docs(self):
        return True
    
    def has_validation_docs(self):
        return True
    
    def training_docs(self):
        return self.dataset["train"]
    
    def validation_docs(self):
        return self.dataset["validation"]
    
    def doc_to_text(self, doc):
        return f"Question: {doc['question']}\\nAnswer:"
    
    def doc_to_target(self, doc):
        return doc['answer']
    
    def construct_requests(self, doc, ctx):
        return rf.greedy_until(ctx, ["\\n"])
    
    def process_results(self, doc, results):
        return {"acc": results[0] == doc['answer']}
    
    def aggregation(self):
        return {"acc": mean}
'''  # noqa: W293 - the seed's file, verbatim (its blank lines carry spaces)


def _rows(items):
    return [{"question": q, "choices": c, "label": a} for q, c, a in items]


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "class_tasks"
    folder.mkdir()
    (folder / "my_tasks.py").write_text(LMEVAL_CLASSES)
    for split, rows in (("train", _rows(QUESTIONS[3:])), ("test", _rows(QUESTIONS[:3]))):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, cls in (("capitals_mc", "CapitalsMC"), ("capitals_gen", "CapitalsGen"),
                      ("capitals_gen_old", "CapitalsGenOld")):
        (folder / f"{name}.yaml").write_text(f"task: {name}\nclass: !function my_tasks.{cls}\n")
    return folder


def _lmeval_task(folder: Path, name: str, num_fewshot: int):
    from lm_eval.tasks import TaskManager as LmTaskManager

    task = LmTaskManager(include_path=str(folder), include_defaults=False).load(
        [name])["tasks"][name]
    task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests()
    return task


def _answer(req, resp) -> bytes:
    if req.request_type == "generate_until":
        return pb.Generation(text=resp).SerializeToString()
    return pb.TokenScores(logprobs=[resp[0]], greedy=[resp[1]]).SerializeToString()


@pytest.mark.reference
@pytest.mark.parametrize(("name", "num_fewshot"), [
    ("capitals_mc", 2), ("capitals_gen", 1),
    ("capitals_gen_old", 1),  # evalfleet also takes construct_requests without **kwargs
])
def test_class_task_requests_and_metrics_match_lm_eval(tmp_path, name, num_fewshot):
    folder = _folder(tmp_path)
    task = TaskManager(include_paths=[folder], include_builtin=False).load([name]).tasks[name]
    requests = task.build_requests(num_fewshot=num_fewshot)
    ref = _lmeval_task(folder, name.removesuffix("_old"), num_fewshot)
    instances = sorted(ref.instances, key=lambda i: (i.doc_id, i.idx))
    assert [(r.doc_id, r.idx, r.request_type, r.arguments) for r in requests] == [
        (i.doc_id, i.idx, i.request_type, i.args) for i in instances]
    assert num_fewshot == 0 or "\n\n" in requests[0].arguments[0]  # shots were drawn

    rnd = random.Random(7)
    if name == "capitals_mc":
        responses = [(-rnd.uniform(0.1, 5.0), False) for _ in requests]
    else:
        responses = [" Paris\n", " Mars", "water"]
    ids = [request_id(r.request_type, r.arguments) for r in requests]
    answers = {i: _answer(r, x) for i, r, x in zip(ids, requests, responses, strict=True)}
    scores = TaskScorer(task, task.eval_docs(), requests, ids, answers).score(log_samples=True)
    aggregate_task(scores, 100)

    for inst, resp in zip(instances, responses, strict=True):
        inst.resps = [resp]
    ref.apply_filters()
    items: dict[str, list] = {}
    for doc_id, doc in ref.doc_iterator():
        values = [i.filtered_resps["none"] for i in instances if i.doc_id == doc_id]
        for metric, value in ref.process_results(doc, values).items():
            items.setdefault(metric, []).append(value)
    assert {m for m, _ in scores.items} == set(items)
    for metric, values in items.items():
        assert scores.items[(metric, "none")] == values, metric
        expected = ref.aggregation()[metric](values)
        assert scores.aggregates[f"{metric},none"] == pytest.approx(expected, abs=1e-12)
    if name == "capitals_mc":
        from lm_eval.api.metrics import mean_stderr

        assert scores.aggregates["acc_stderr,none"] == pytest.approx(
            mean_stderr(items["acc"]), abs=1e-12)


def test_class_must_be_a_class(tmp_path):
    folder = _folder(tmp_path)
    (folder / "bad.yaml").write_text("task: bad\nclass: !function my_tasks.HERE\n")
    with pytest.raises(TaskError, match="must name a class"):
        TaskManager(include_paths=[folder], include_builtin=False).load(["bad"])


def _seed_folder(tmp_path: Path, import_lines: str) -> tuple[Path, Path]:
    """The seed's example with its import line(s) replaced, a YAML naming it, and a mirror
    holding its DATASET_PATH/DATASET_NAME."""
    folder = tmp_path / "seed"
    folder.mkdir()
    source = SEED_CUSTOM_TASK.replace(
        "from lm_eval.api.task import Task\nfrom lm_eval.api.metrics import mean\n"
        if "\n" in import_lines.strip() or "mean" in import_lines else
        "from lm_eval.api.task import Task\n", import_lines)
    (folder / "custom_task.py").write_text(source)
    (folder / "custom_task.yaml").write_text(
        "task: custom_task\nclass: !function custom_task.CustomTask\n")
    mirror = tmp_path / "mirror"
    data = mirror / "path/to/your/dataset/custom_dataset"
    data.mkdir(parents=True)
    rows = [{"question": "What is 2 + 2?", "answer": " 4"},
            {"question": "Name a colour.", "answer": " red"},
            {"question": "Say yes.", "answer": " yes"}]
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, mirror


def test_seed_custom_task_cannot_run_in_lm_eval(tmp_path):
    """lm-eval 0.4.13 cannot instantiate the seed's class (no has_test_docs /
    higher_is_better; and its rf.greedy_until is gone)."""
    from lm_eval.tasks import TaskManager as LmTaskManager

    folder, _ = _seed_folder(tmp_path, "from lm_eval.api.task import Task\n")
    with pytest.raises(Exception) as err:  # noqa: B017,PT011 - whatever lm-eval raises
        LmTaskManager(include_path=str(folder), include_defaults=False).load(["custom_task"])
    assert "abstract" in str(err.value) or "rf" in str(err.value)


@pytest.mark.parametrize("imports", [
    "from evalfleet.tasks.api import Task, mean, rf\n",  # one line instead of the two
    "from evalfleet.tasks.api import Task, rf\n",  # lm-eval's mean line kept (lm-eval here)
])
def test_seed_custom_task_runs_after_changing_its_import_line(tmp_path, imports, background_loop,
                                                              tiny_worker):
    """End to end through the real services on the tiny model."""
    from evalfleet.server.access import AccessPolicy
    from evalfleet.server.service import CoordinatorOptions, start_coordinator

    folder, mirror = _seed_folder(tmp_path, imports)
    # the operator lets clients name task folders (serve coordinator --allow_include_paths)
    options = CoordinatorOptions(policy=AccessPolicy(allow_include_paths=True))
    server, _ = background_loop.run(start_coordinator(workers=[tiny_worker.address],
                                                      data_dir=mirror, options=options))
    try:
        spec = cpb.EvaluationSpec(model="hf", tasks=["custom_task"], include_paths=[str(folder)],
                                  log_samples=True, bootstrap_iters=0)
        final, _, results, by_task = run_evaluation(server.address, spec, timeout_s=600)
        assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
        samples = by_task["custom_task"]
    finally:
        background_loop.run(server.stop(0.5))
    entry = results["results"]["custom_task"]
    assert entry["sample_len"] == 3 and 0.0 <= entry["acc,none"] <= 1.0
    assert results["versions"]["custom_task"] == 0
    assert [s["arguments"]["gen_args_0"]["arg_0"] for s in samples] == [
        "Question: What is 2 + 2?\nAnswer:", "Question: Name a colour.\nAnswer:",
        "Question: Say yes.\nAnswer:"]
    assert all(s["arguments"]["gen_args_0"]["arg_1"] == {"until": ["\n"]} for s in samples)
    assert [s["acc"] for s in samples] == [s["resps"][0][0] == s["target"] for s in samples]
    print(textwrap.shorten(json.dumps(entry), 200))
