"""``GROUP@generate``: a group asked in a task format is the group over its tasks' formats,
aggregated as the group aggregates (mean, weighted by size) over the format's metrics."""

from __future__ import annotations

import pytest
from conftest import run_evaluation

from evalfleet.tasks.errors import TaskError
from evalfleet.tasks.manager import TaskManager
from evalfleet.v1 import coordinator_pb2 as cpb

#: A small group of two real MMLU subjects, nested one level (a subgroup of one subject).
GROUPS = {
    "mini_mmlu.yaml": "group: mini_mmlu\ntask:\n  - mmlu_astronomy\n  - mini_mmlu_sub\n"
                      "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
                      "metadata:\n  version: 1\n",
    "mini_mmlu_sub.yaml": "group: mini_mmlu_sub\ntask:\n  - mmlu_anatomy\n"
                          "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n",
    "mixed.yaml": "group: mixed_group\ntask:\n  - arc_easy\n  - gsm8k\n",
}


@pytest.fixture
def group_folder(tmp_path):
    for name, text in GROUPS.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_group_format_is_the_group_over_its_tasks_formats(group_folder, data_dir):
    manager = TaskManager(include_paths=[group_folder], data_dir=data_dir)
    tree = manager.load(["mini_mmlu@generate"])
    assert tree.roots == ["mini_mmlu@generate"]
    assert tree.groups["mini_mmlu@generate"].children == ["mmlu_astronomy@generate",
                                                          "mini_mmlu_sub@generate"]
    assert tree.groups["mini_mmlu_sub@generate"].children == ["mmlu_anatomy@generate"]
    assert sorted(tree.tasks) == ["mmlu_anatomy@generate", "mmlu_astronomy@generate"]
    for group in tree.groups.values():
        assert [(a.metric, a.weight_by_size, a.filter_list)
                for a in group.aggregate_metric_list] == [("exact_match", True, None),
                                                          ("unparsed", True, None)]
    assert tree.tasks["mmlu_anatomy@generate"].output_type == "generate_until"
    with pytest.raises(TaskError, match=r"task 'gsm8k' is generate_until, not multiple_choice"):
        manager.load(["mixed_group@generate"])


def test_a_formatted_group_runs_and_aggregates_its_tasks(coordinator, group_folder):
    final, _, results, _ = run_evaluation(coordinator.address, cpb.EvaluationSpec(
        model="hf", tasks=["mini_mmlu@generate"], include_paths=[str(group_folder)], limit=2,
        apply_chat_template=True, bootstrap_iters=0, gen_kwargs="max_gen_toks=4"))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    tasks = results["results"]
    group = results["groups"]["mini_mmlu@generate"]
    assert results["group_subtasks"]["mini_mmlu@generate"] == ["mmlu_astronomy@generate",
                                                               "mini_mmlu_sub@generate"]
    for key in ("exact_match,none", "exact_match,flexible-extract", "unparsed,none",
                "unparsed,flexible-extract"):
        leaves = [tasks["mmlu_astronomy@generate"][key], tasks["mmlu_anatomy@generate"][key]]
        assert group[key] == pytest.approx(sum(leaves) / 2), key  # 2 documents each
        assert results["groups"]["mini_mmlu_sub@generate"][key] == pytest.approx(leaves[1])
    assert not any(k.startswith("acc") for k in group)
