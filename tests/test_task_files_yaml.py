"""Values in a task or group YAML that lm-eval would fail on (or that are plainly wrong) are
refused when the task loads, in one line naming the file and the key; no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tasks_errors import GOOD as ARC  # an ARC-Easy task, {name} to fill

from evalfleet.tasks import TaskError, TaskManager


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def _refused(folder: Path, data_dir: Path, name: str) -> str:
    with pytest.raises(TaskError) as info:
        TaskManager(include_paths=[folder], data_dir=data_dir).load([name])
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_negative_num_fewshot_is_refused(tmp_path, data_dir):
    path = _write(tmp_path, "neg", ARC.format(name="neg") + "num_fewshot: -1\n")
    message = _refused(tmp_path, data_dir, "neg")
    assert str(path) in message and "'num_fewshot'" in message
    assert "non-negative integer, got -1" in message


def test_higher_is_better_must_be_true_or_false(tmp_path, data_dir):
    path = _write(tmp_path, "hib", ARC.format(name="hib")
                  + "metric_list:\n  - metric: acc\n    higher_is_better: maybe\n")
    message = _refused(tmp_path, data_dir, "hib")
    assert str(path) in message and "'metric_list[0].higher_is_better'" in message
    assert "expected true or false, got 'maybe'" in message


def test_a_tag_that_is_a_number_is_one_line_naming_the_file(tmp_path, data_dir):
    """Before: ``tag: 5`` raised TypeError while indexing, so no task could load at all."""
    path = _write(tmp_path, "tagged", ARC.format(name="tagged") + "tag: 5\n")
    _write(tmp_path, "fine", ARC.format(name="fine"))
    message = _refused(tmp_path, data_dir, "tagged")
    assert str(path) in message and "'tag'" in message and "got int 5" in message
    manager = TaskManager(include_paths=[tmp_path], data_dir=data_dir)
    assert "fine" in manager.load(["fine"]).tasks  # the other files still load


def test_a_group_containing_itself_is_refused(tmp_path, data_dir):
    """Before: RecursionError (a traceback) for a group listing itself, directly or not."""
    _write(tmp_path, "arc1", ARC.format(name="arc1"))
    path = _write(tmp_path, "loop", "group: loop\ntask:\n  - arc1\n  - loop\n")
    message = _refused(tmp_path, data_dir, "loop")
    assert str(path) in message and "'task'" in message
    assert "group 'loop' contains itself (loop -> loop)" in message

    _write(tmp_path, "outer", "group: outer\ntask:\n  - inner\n")
    inner = _write(tmp_path, "inner", "group: inner\ntask:\n  - arc1\n  - outer\n")
    message = _refused(tmp_path, data_dir, "outer")
    assert str(inner) in message and "(outer -> inner -> outer)" in message


def test_an_empty_group_is_refused(tmp_path, data_dir):
    path = _write(tmp_path, "empty", "group: empty\ntask: []\n")
    message = _refused(tmp_path, data_dir, "empty")
    assert str(path) in message and "'task'" in message and "has no tasks" in message
    _write(tmp_path, "bare", "group: bare\naggregate_metric_list:\n  - metric: acc\n")
    assert "group 'bare' has no tasks" in _refused(tmp_path, data_dir, "bare")


def test_a_group_aggregating_an_unknown_metric_is_refused(tmp_path, data_dir):
    _write(tmp_path, "arc1", ARC.format(name="arc1"))
    _write(tmp_path, "arc2", ARC.format(name="arc2"))
    path = _write(tmp_path, "grp", "group: grp\ntask: [arc1, arc2]\naggregate_metric_list:\n"
                  "  - metric: acc\n  - metric: acuracy\n")
    message = _refused(tmp_path, data_dir, "grp")
    assert str(path) in message and "'aggregate_metric_list[1].metric'" in message
    assert "unknown metric 'acuracy': none of the tasks of group 'grp' reports it" in message
    assert "they report acc, acc_norm" in message


def test_group_aggregates_lm_eval_accepts_still_load(tmp_path, data_dir):
    """A registered metric the tasks do not report (lm-eval's afrobench groups aggregate acc
    over bleu tasks: lm-eval warns and reports nothing), and any name where a task computes its
    own results (process_results may return any name), are kept."""
    _write(tmp_path, "arc1", ARC.format(name="arc1"))
    _write(tmp_path, "good", "group: good\ntask: [arc1]\naggregate_metric_list:\n"
           "  - metric: acc_norm\n  - metric: exact_match\n")
    tree = TaskManager(include_paths=[tmp_path], data_dir=data_dir).load(["good"])
    assert [a.metric for a in tree.groups["good"].aggregate_metric_list] == \
        ["acc_norm", "exact_match"]
    (tmp_path / "custom.py").write_text("def results(doc, out):\n    return {'score': 1}\n")
    _write(tmp_path, "arc3", ARC.format(name="arc3")
           + "process_results: !function custom.results\nmetric_list:\n  - metric: score\n"
             "    aggregation: mean\n    higher_is_better: true\n")
    _write(tmp_path, "mixed", "group: mixed\ntask: [arc1, arc3]\naggregate_metric_list:\n"
           "  - metric: score_v2\n")
    assert TaskManager(include_paths=[tmp_path], data_dir=data_dir).load(["mixed"]).groups


def test_member_overrides_of_a_group_or_tag_keep_their_tasks_names(tmp_path, data_dir):
    """``- task: mmlu`` with ``num_fewshot: 5`` (lm-eval's openllm group) sets the shots of
    mmlu's tasks. Before: the member's ``task`` key renamed every one of them ``mmlu``, so the
    tree held one task and a group listing itself (RecursionError in ``leaves_of``)."""
    for name in ("t1", "t2", "t3"):
        _write(tmp_path, name, ARC.format(name=name) + "tag: tagged\n")
    _write(tmp_path, "sub", "group: sub\ntask: [t1, t2]\n")
    _write(tmp_path, "top", "group: top\ntask:\n  - task: sub\n    num_fewshot: 5\n"
           "  - task: tagged\n    num_fewshot: 3\n")
    tree = TaskManager(include_paths=[tmp_path], data_dir=data_dir).load(["top"])
    assert tree.leaves_of("top") == ["t1", "t2", "t3"]
    assert tree.groups["sub"].children == ["t1", "t2"]
    # t1 and t2 come first through sub (a task loaded twice keeps its first settings)
    assert {n: t.effective_num_fewshot for n, t in tree.tasks.items()} == \
        {"t1": 5, "t2": 5, "t3": 3}
