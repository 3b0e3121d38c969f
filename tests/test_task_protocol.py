"""EvalTask: YAML tasks, their @format variants and Python class tasks are one type the
coordinator and CLI use without asking which kind they hold (no hasattr)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evalfleet.client import eval_command
from evalfleet.common.request_kind import OutputType, RequestKind
from evalfleet.tasks import EvalTask, SampleIndexError, TaskManager, show_task
from evalfleet.tasks.class_task import ClassTask
from evalfleet.tasks.task import Task

CLASS_TASK = '''\
from evalfleet.tasks.api import Task, mean, rf


class Tiny(Task):
    VERSION = 1

    def download(self, *args, **kwargs):
        self.dataset = {"test": [{"q": f"Question {i}?"} for i in range(5)]}

    def has_test_docs(self):
        return True

    def test_docs(self):
        return self.dataset["test"]

    def doc_to_text(self, doc):
        return doc["q"]

    def doc_to_target(self, doc):
        return " A"

    def construct_requests(self, doc, ctx, **kwargs):
        return [rf.loglikelihood(ctx, " A"), rf.loglikelihood(ctx, " B")]

    def process_results(self, doc, results):
        return {"acc": float(results[0][0] > results[1][0])}

    def aggregation(self):
        return {"acc": mean}
'''


@pytest.fixture()
def manager(tmp_path: Path, data_dir: Path) -> TaskManager:
    (tmp_path / "my_tasks.py").write_text(CLASS_TASK)
    (tmp_path / "tiny_class.yaml").write_text(
        "task: tiny_class\nclass: !function my_tasks.Tiny\n")
    return TaskManager(include_paths=[tmp_path], data_dir=data_dir)


def _kinds(manager: TaskManager) -> tuple[EvalTask, EvalTask, EvalTask]:
    tasks = manager.load(["tiny_class", "arc_easy", "arc_easy@generate"]).tasks
    return tasks["tiny_class"], tasks["arc_easy"], tasks["arc_easy@generate"]


def test_every_task_kind_is_an_eval_task_with_typed_kinds(manager: TaskManager) -> None:
    cls, yaml, formatted = _kinds(manager)
    assert isinstance(cls, ClassTask) and isinstance(yaml, Task) and isinstance(formatted, Task)
    assert all(isinstance(t, EvalTask) for t in (cls, yaml, formatted))
    # the --limit/--samples selection is one implementation, not a copy per kind
    for method in ("sample_size", "eval_docs"):
        assert getattr(type(cls), method) is getattr(type(yaml), method) \
            is getattr(EvalTask, method)
    assert yaml.output_type is OutputType.MULTIPLE_CHOICE
    assert formatted.output_type is OutputType.GENERATE_UNTIL
    assert cls.output_type is None  # no OUTPUT_TYPE: learnt from its requests
    requests = cls.build_requests(limit=2)
    assert [r.request_type for r in requests] == [RequestKind.LOGLIKELIHOOD] * 4
    assert all(type(r.request_type) is RequestKind for r in requests)  # parsed from a str
    assert cls.output_type is OutputType.MULTIPLE_CHOICE
    assert {type(r.request_type) for r in yaml.build_requests(limit=1)} == {RequestKind}
    # results' configs keep lm-eval's plain string
    assert type(yaml.config["output_type"]) is str and yaml.config["output_type"] == \
        "multiple_choice"


def test_origin_task_file_and_samples_wording_per_kind(manager: TaskManager,
                                                       tmp_path: Path) -> None:
    cls, yaml, _ = _kinds(manager)
    assert cls.task_file == tmp_path / "tiny_class.yaml"
    assert yaml.task_file is not None and yaml.task_file.name == "arc_easy.yaml"
    yaml_line, class_line = cls.origin_lines()
    assert yaml_line == f"yaml: {tmp_path / 'tiny_class.yaml'}"
    assert re.fullmatch(r"class: \S*my_tasks\S*\.Tiny \(5 docs\)", class_line)
    assert yaml.origin_lines()[1].startswith("dataset: allenai/ai2_arc / ARC-Easy split test (")
    shown = show_task(manager, "tiny_class")
    assert f"\n  {yaml_line}\n  {class_line}\n" in shown
    with pytest.raises(SampleIndexError, match=r"samples \[7\] are outside its 5 documents "
                       r"\(indices 0\.\.4\)"):
        cls.eval_docs(samples=[7])
    with pytest.raises(SampleIndexError, match=r"outside the \d+ documents of split 'test'"):
        yaml.eval_docs(samples=[10**6])
    assert [i for i, _ in cls.eval_docs(samples=[4, 1])] == [0, 1]
    assert cls.sample_size(0.5) == 3


def test_predict_only_makes_bypass_the_only_metric_of_either_kind(manager: TaskManager) -> None:
    built = _kinds(manager)
    before = [([m.name for m in t.metric_list], t.process_results_fn, t.config.get("metric_list"))
              for t in built]
    cls, yaml, formatted = (t.predicting_only() for t in built)
    for task in (cls, yaml, formatted):
        assert [m.name for m in task.metric_list] == ["bypass"]
    assert yaml.process_results_fn is None
    assert yaml.config["metric_list"] == [{"metric": "bypass"}]
    assert cls.process_results_fn is not None
    assert cls.process_results_fn({"q": "x"}, [(0.0, True)]) == {"bypass": None}
    # a value, not a mutation: the tasks built first keep their metrics and config
    assert [([m.name for m in t.metric_list], t.process_results_fn, t.config.get("metric_list"))
            for t in built] == before
    assert "bypass" not in before[1][0] and before[1][2] != [{"metric": "bypass"}]


def test_warm_up_loads_a_yaml_tasks_documents_not_a_class_tasks(
        manager: TaskManager, monkeypatch: pytest.MonkeyPatch) -> None:
    from evalfleet import scoring

    monkeypatch.setattr(scoring, "warm_up", lambda: None)
    tree = manager.load(["tiny_class", "arc_easy"])  # the class task first
    cls, yaml = tree.tasks["tiny_class"], tree.tasks["arc_easy"]
    assert cls.loads_own_docs and not yaml.loads_own_docs
    eval_command._ready_coordinator_modules(tree)
    assert cls._docs is None  # the class's own code is not run in the warm-up thread
    assert yaml._eval_docs is not None  # the data loader was readied with the YAML task


def test_request_cache_builds_a_class_tasks_requests_and_caches_a_yaml_tasks(
        manager: TaskManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evalfleet.server import request_cache

    monkeypatch.setenv("EVALFLEET_CACHE_DIR", str(tmp_path / "cache"))
    cls, yaml, _ = _kinds(manager)
    settings = {"limit": 2, "samples": None, "num_fewshot": None, "fewshot_seed": 1234,
                "system_instruction": None, "apply_chat_template": False, "gen_kwargs": None}
    built = request_cache.build_task_requests(cls, mode="true", **settings)
    assert len(built.requests) == 4 and built.original_size == 5
    assert not request_cache.cache_root().exists()  # nothing its key could keep fresh
    request_cache.build_task_requests(yaml, mode="true", **settings)
    assert [p.name.split("-")[0] for p in request_cache.cache_root().iterdir()] == ["arc_easy"]
