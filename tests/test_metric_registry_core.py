"""The registry carries how each metric is computed: a metric (per-document function, corpus
aggregation, stderr rule) and a filter are each one registered entry, a ``!function`` metric on
a multiple-choice task is computed, and an error inside a user's metric is that metric's."""

from __future__ import annotations

import math
import random

import pytest
from conftest import run_evaluation
from scoring_harness import score_evalfleet, score_lmeval, write_task

from evalfleet.common.registry import DuplicateNameError, Registry, UnknownNameError
from evalfleet.scoring.per_document import MetricError
from evalfleet.scoring.registry import (
    AGGREGATIONS,
    METRICS,
    AggregationSpec,
    MetricSpec,
    register_metric,
)
from evalfleet.tasks.filters import FILTERS, Filter, register_filter
from evalfleet.v1 import coordinator_pb2 as cpb

ROWS = [
    {"question": "Capital of France?", "answer": "Paris", "choices": ["Berlin", "Paris", "Rome"],
     "label": 1},
    {"question": "2 + 2?", "answer": "4", "choices": ["4", "5", "22"], "label": 0},
    {"question": "Colour of the sky?", "answer": "Blue", "choices": ["green", "blue", "red"],
     "label": 1},
    {"question": "Opposite of up?", "answer": "down", "choices": ["down", "left", "up"],
     "label": 0},
]
GEN = """\
output_type: generate_until
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
"""
MC = """\
output_type: multiple_choice
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: label
doc_to_choice: "{{choices}}"
"""
UTILS = '''\
def gold_is_pred(references, predictions):
    """A user's metric on a multiple-choice task: 1 when the prediction is the gold."""
    return float(references[0] == predictions[0])


def broken(references, predictions):
    """A user's metric with a bug: a TypeError raised inside it."""
    return len(references[0]) + None
'''


def test_registry_names_unknown_and_duplicate_entries():
    reg: Registry[int] = Registry("widget", [("one", 1), ("two", 2)])
    assert reg.get("one") == 1 and reg["two"] == 2 and "one" in reg and reg.find("x") is None
    assert reg.names() == ["one", "two"] and len(reg) == 2
    with pytest.raises(UnknownNameError) as err:
        reg.get("three")
    assert str(err.value) == "unknown widget 'three'; known: one, two"
    assert isinstance(err.value, KeyError)
    with pytest.raises(DuplicateNameError, match="widget 'one' is already registered"):
        reg.register("one", 3)
    reg.register("one", 3, replace=True)
    assert reg.get("one") == 3
    assert reg.unregister("two") == 2 and reg.names() == ["one"]


def test_metrics_groups_aggregations_and_filters_share_the_registry():
    from evalfleet.scoring.registry import GROUPS

    for registry in (METRICS, AGGREGATIONS, GROUPS, FILTERS):
        assert isinstance(registry, Registry)
    with pytest.raises(UnknownNameError, match="unknown filter 'nope'; known: .*take_first"):
        FILTERS.get("nope")
    with pytest.raises(DuplicateNameError):
        register_filter("take_first", Filter)
    # every metric the multiple-choice kernel computes is declared by its group, nowhere else
    from evalfleet.scoring.multiple_choice import KERNEL_METRICS

    assert set(KERNEL_METRICS) <= set(GROUPS.get("multiple_choice").metrics)


class _Reverse(Filter):
    """A user's filter: every response reversed."""

    def apply(self, resps, docs):
        return [[r[::-1] for r in rs] for rs in resps]


def _char_overlap(gold, result, *, lowercase=False):
    """A user's per-document metric: the share of the gold's characters in the result."""
    if lowercase:
        gold, result = gold.lower(), result.lower()
    return sum(c in result for c in gold) / len(gold)


def _geometric_mean(items):
    return math.exp(sum(math.log(x + 1.0) for x in items) / len(items)) - 1.0


def _spread(items):
    """A stderr rule of the aggregation's own: half the range of the items."""
    return (max(items) - min(items)) / 2


@pytest.fixture()
def registered_metric_and_filter():
    agg = AggregationSpec("geometric_mean_test", _geometric_mean, "custom", stderr_fn=_spread)
    spec = register_metric(MetricSpec("char_overlap_test", agg, True, ("generate_until",),
                                      per_doc=_char_overlap))
    register_filter("reverse_test", _Reverse)
    yield spec
    METRICS.unregister("char_overlap_test")
    AGGREGATIONS.unregister("geometric_mean_test")
    FILTERS.unregister("reverse_test")


def test_a_registered_metric_and_filter_score_a_task(tmp_path, registered_metric_and_filter):
    """One metric entry (per-document function, corpus aggregation, stderr rule) and one
    filter entry: a task naming both scores with them, with no other change."""
    assert registered_metric_and_filter.aggregation == "geometric_mean_test"
    task = GEN + """\
filter_list:
  - name: reversed
    filter:
      - function: reverse_test
      - function: take_first
metric_list:
  - metric: char_overlap_test
    lowercase: true
"""
    write_task(tmp_path, "t_registered", task, ROWS)
    outputs = [" sirap", "x", " EULB", " nwod!"]
    scores = score_evalfleet(tmp_path, "t_registered", outputs, bootstrap_iters=10)
    expected = [_char_overlap(row["answer"], out[::-1], lowercase=True)
                for row, out in zip(ROWS, outputs, strict=True)]
    assert expected == [1.0, 0.0, 1.0, 1.0]
    assert scores.items == {("char_overlap_test", "reversed"): expected}
    assert [s["filtered_resps"] for s in scores.samples] == [
        ["paris "], ["x"], ["BLUE "], ["!down "]]
    assert scores.aggregates["char_overlap_test,reversed"] == pytest.approx(
        _geometric_mean(expected))
    assert scores.aggregates["char_overlap_test_stderr,reversed"] == 0.5
    assert scores.higher_is_better["char_overlap_test"] is True


def test_registering_a_taken_metric_name_is_an_error():
    with pytest.raises(DuplicateNameError, match="metric 'acc' is already registered"):
        register_metric(MetricSpec("acc", "mean", True, ("generate_until",)))
    with pytest.raises(UnknownNameError, match="unknown aggregation 'no_such_agg'"):
        register_metric(MetricSpec("fresh_metric_test", "no_such_agg", True))
    assert "fresh_metric_test" not in METRICS


@pytest.mark.reference
def test_function_metric_on_a_multiple_choice_task_is_computed(tmp_path):
    """lm-eval 0.4.13 drops a `!function` metric on a multiple-choice task (its
    process_results emits only the built-in names); evalfleet computes it from each document's
    (gold index, predicted index) and reports it beside lm-eval's own metrics, unchanged."""
    metrics = """\
metric_list:
  - metric: acc
  - metric: !function utils.gold_is_pred
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
"""
    write_task(tmp_path, "t_mc_fn", MC + metrics, ROWS, utils=UTILS)
    rnd = random.Random(5)
    responses = [(-rnd.uniform(0.5, 9.0), rnd.random() < 0.5) for _ in range(len(ROWS) * 3)]
    ours = score_evalfleet(tmp_path, "t_mc_fn", responses)
    theirs = score_lmeval(tmp_path, "t_mc_fn", responses)
    preds = [max(range(3), key=lambda j, d=d: responses[3 * d + j][0]) for d in range(4)]
    expected = [float(p == row["label"]) for p, row in zip(preds, ROWS, strict=True)]
    assert ours.items[("gold_is_pred", "none")] == expected
    assert 0.0 < sum(expected) < len(expected)
    # the function agrees with acc (same prediction, same gold), as it should
    assert ours.items[("acc", "none")] == expected
    assert ours.aggregates["gold_is_pred,none"] == pytest.approx(sum(expected) / 4)
    assert [r["metrics"] for r in ours.samples] == [["acc", "gold_is_pred", "acc_norm"]] * 4
    # the documented difference: lm-eval leaves the function out; everything else is equal
    assert ("gold_is_pred", "none") not in theirs["items"]
    assert {k: v for k, v in ours.items.items() if k[0] != "gold_is_pred"} == theirs["items"]
    for key, value in theirs["aggregates"].items():
        assert ours.aggregates[key] == pytest.approx(value, abs=1e-12), key


def test_type_error_inside_a_metric_is_that_metrics_error(tmp_path):
    """The function is called with lm-eval's keywords (its signature takes them) and its own
    TypeError is reported naming it: no second call with a [gold, result] pair, whose
    "missing argument" error would hide the bug."""
    write_task(tmp_path, "t_broken", GEN + "metric_list:\n  - metric: !function utils.broken\n"
               "    aggregation: mean\n", ROWS[:2], utils=UTILS)
    with pytest.raises(MetricError) as err:
        score_evalfleet(tmp_path, "t_broken", [" Paris", " 4"])
    assert str(err.value) == ("metric 'broken' raised TypeError: unsupported operand type(s) "
                              "for +: 'int' and 'NoneType'")


def test_function_metric_on_multiple_choice_through_the_services(tmp_path, coordinator):
    """End to end on the tiny model (real worker and coordinator on loopback): the metric is
    in the results and the samples, and a broken metric fails the job naming it."""
    write_task(tmp_path, "t_mc_e2e", MC + """\
metric_list:
  - metric: acc
  - metric: !function utils.gold_is_pred
    aggregation: mean
    higher_is_better: true
""", ROWS, utils=UTILS)
    spec = cpb.EvaluationSpec(model="hf", tasks=["t_mc_e2e"], include_paths=[str(tmp_path)],
                              log_samples=True, bootstrap_iters=0)
    final, _, results, samples = run_evaluation(coordinator.address, spec, timeout_s=300)
    assert results is not None, final.error
    entry = results["results"]["t_mc_e2e"]
    assert entry["gold_is_pred,none"] == entry["acc,none"]
    assert results["higher_is_better"]["t_mc_e2e"]["gold_is_pred"] is True
    assert [s["gold_is_pred"] for s in samples["t_mc_e2e"]] == [
        s["acc"] for s in samples["t_mc_e2e"]]

    write_task(tmp_path / "broken", "t_gen_broken", GEN + """\
metric_list:
  - metric: !function utils.broken
    aggregation: mean
""", ROWS[:1], utils=UTILS)
    spec = cpb.EvaluationSpec(model="hf", tasks=["t_gen_broken"], gen_kwargs="max_gen_toks=2",
                              include_paths=[str(tmp_path / "broken")], bootstrap_iters=0)
    final, _, results, _ = run_evaluation(coordinator.address, spec, timeout_s=300)
    assert results is None and final.state == cpb.EVALUATION_STATE_FAILED
    assert "MetricError: metric 'broken' raised TypeError: unsupported operand" in final.error
    assert "\n" not in final.error.strip()


def test_function_metric_where_no_group_computes_it_fails_loading(tmp_path):
    """A `!function` metric on a loglikelihood task was left out of the results (as lm-eval
    leaves it out); now the task refuses to load, naming the file, entry and metric."""
    from evalfleet.tasks import TaskError, TaskManager

    task = """\
output_type: loglikelihood
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: " {{answer}}"
metric_list:
  - metric: !function utils.gold_is_pred
    aggregation: mean
"""
    write_task(tmp_path, "t_ll_fn", task, ROWS, utils=UTILS)
    with pytest.raises(TaskError) as err:
        TaskManager(include_paths=[tmp_path], include_builtin=False).load(["t_ll_fn"])
    message = str(err.value)
    assert str(tmp_path / "t_ll_fn.yaml") in message and "metric_list[0].metric" in message
    assert "'!function' metric is not computed for output_type loglikelihood" in message
    assert "'gold_is_pred'" in message


def test_the_evaluator_names_no_metric():
    """How a metric is computed lives in the registry: server/evaluator.py mentions none of
    the registered metric names (it held the kernel's name list and special cases before)."""
    import re
    from pathlib import Path

    from evalfleet.scoring.registry import GROUPS
    from evalfleet.server import evaluator

    source = Path(evaluator.__file__).read_text(encoding="utf-8")
    names = set(METRICS) | {m for g in GROUPS.values() for m in g.metrics}
    assert not [n for n in sorted(names) if re.search(rf"\b{re.escape(n)}\b", source)]
    assert len(source.splitlines()) <= 350
