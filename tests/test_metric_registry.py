"""One metric registry: every metric a task names is computed (as lm-eval 0.4.13 computes it) or
the task fails to load with an error naming its file and the metric."""

from __future__ import annotations

import random

import pytest
from scoring_harness import score_evalfleet, score_lmeval, write_task

from evalfleet.scoring import aggregate, stderr
from evalfleet.tasks import TaskError, TaskManager

ROWS = [
    {"question": "Capital of France?", "answer": "Paris", "choices": ["Berlin", "Paris"],
     "label": 1},
    {"question": "2 + 2?", "answer": "4", "choices": ["4", "5"], "label": 0},
    {"question": "Colour of the sky?", "answer": "Blue.", "choices": ["green", "blue"],
     "label": 1},
]
GEN = """\
output_type: generate_until
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
"""
UTILS = '''\
def overlap(references, predictions):
    """A user's metric: a dict of two values per document."""
    ref, pred = set(references[0].lower().split()), set(predictions[0].lower().split())
    return {"overlap": len(ref & pred) / max(len(ref), 1), "longer": float(len(pred) > 1)}


def first_char(references, predictions):
    return float(references[0][:1] == predictions[0][:1])
'''


def _load(folder, name):
    return TaskManager(include_paths=[folder], include_builtin=False).load([name])


def test_unknown_metric_fails_loading_naming_file_and_metric(tmp_path):
    write_task(tmp_path, "t_rouge", GEN + "metric_list:\n  - metric: rougeLsum\n", ROWS)
    with pytest.raises(TaskError) as err:
        _load(tmp_path, "t_rouge")
    assert str(tmp_path / "t_rouge.yaml") in str(err.value)
    assert "rougeLsum" in str(err.value) and "metric_list[0].metric" in str(err.value)


def test_metric_of_another_output_type_fails_loading(tmp_path):
    mc = GEN.replace("generate_until", "multiple_choice") + 'doc_to_choice: "{{choices}}"\n'
    write_task(tmp_path, "t_mc_bleu", mc + "metric_list:\n  - metric: bleu\n", ROWS)
    with pytest.raises(TaskError, match="'bleu' is not computed for output_type "
                                        "multiple_choice"):
        _load(tmp_path, "t_mc_bleu")


def test_unknown_aggregation_fails_loading(tmp_path):
    write_task(tmp_path, "t_agg", GEN + "metric_list:\n  - metric: exact_match\n"
               "    aggregation: geometric_mean\n", ROWS)
    with pytest.raises(TaskError, match="unknown aggregation 'geometric_mean'"):
        _load(tmp_path, "t_agg")


@pytest.mark.reference
def test_generation_metrics_match_lm_eval(tmp_path):
    """chrf, ter, bleu, exact_match with its options and `!function` metrics (a dict-returning
    one and a float one), per document and aggregated, equal lm-eval's on the same outputs."""
    metrics = """\
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
  - metric: chrf
  - metric: ter
  - metric: bleu
  - metric: !function utils.overlap
    aggregation: mean
    higher_is_better: true
  - metric: !function utils.first_char
    aggregation: mean
    higher_is_better: true
"""
    write_task(tmp_path, "t_gen", GEN + metrics, ROWS, utils=UTILS)
    outputs = [" paris", " 4 apples", " blue"]
    ours = score_evalfleet(tmp_path, "t_gen", outputs)
    theirs = score_lmeval(tmp_path, "t_gen", outputs)
    assert set(ours.items) == set(theirs["items"])
    assert {("overlap", "none"), ("longer", "none"), ("chrf", "none"),
            ("first_char", "none")} <= set(ours.items)
    for key, values in theirs["items"].items():
        assert [list(v) if isinstance(v, tuple) else v for v in ours.items[key]] == [
            list(v) if isinstance(v, tuple) else v for v in values], key
    for key, value in theirs["aggregates"].items():
        assert ours.aggregates[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.reference
def test_multiple_choice_metrics_match_lm_eval(tmp_path):
    mc = GEN.replace("generate_until", "multiple_choice").replace(
        'doc_to_target: "{{answer}}"', "doc_to_target: label") + 'doc_to_choice: "{{choices}}"\n'
    metrics = "".join(f"  - metric: {m}\n" for m in (
        "acc", "acc_norm", "acc_bytes", "acc_mutual_info", "exact_match", "f1", "mcc"))
    write_task(tmp_path, "t_mc", mc + "metric_list:\n" + metrics, ROWS)
    rnd = random.Random(3)
    responses = [(-rnd.uniform(0.5, 9.0), rnd.random() < 0.5) for _ in range(len(ROWS) * 4)]
    ours = score_evalfleet(tmp_path, "t_mc", responses)
    theirs = score_lmeval(tmp_path, "t_mc", responses)
    assert set(ours.items) == set(theirs["items"])
    for key, value in theirs["aggregates"].items():
        assert ours.aggregates[key] == pytest.approx(value, abs=1e-12), key


def test_acc_all_matches_lm_eval():
    from lm_eval.api.metrics import acc_all, acc_all_stderr

    rnd = random.Random(0)
    items = [(rnd.randint(0, 1), {"idx": {"paragraph": rnd.randint(0, 3),
                                          "question": rnd.randint(0, 5)},
                                  "label": rnd.randint(0, 1)}) for _ in range(60)]
    assert aggregate("acc_all", items) == pytest.approx(acc_all(items), abs=1e-15)
    assert stderr("acc_all", items) == pytest.approx(acc_all_stderr(items), abs=1e-15)


def test_metric_defaults_are_read_from_the_scoring_registry():
    """The task engine has no table of its own: its defaults are the registry's entries."""
    from evalfleet.scoring import registry
    from evalfleet.tasks import metric_config

    assert not hasattr(metric_config, "METRIC_DEFAULTS")
    for output_type, names in registry.DEFAULT_METRICS.items():
        parsed = metric_config.parse_metric_list(None, output_type, None)
        assert [m.name for m in parsed] == list(names)
        assert all(m.spec is registry.METRICS[m.name] for m in parsed)


@pytest.mark.reference
def test_passthrough_metric_and_filter_class_on_generation_match_lm_eval(tmp_path):
    """lm-eval's afrobench style: `metric: f1` on generate_until gives [gold, result] pairs to
    a custom aggregation; a filter given as `function: !function utils.Cls` is that class."""
    utils = UTILS + '''

def pair_f1(items):
    """A user's aggregation over [gold, result] pairs."""
    return sum(g.strip().lower() == r.strip().lower() for g, r in items) / len(items)


class Strip:
    def __init__(self, chars=" "):
        self.chars = chars

    def apply(self, resps, docs):
        return [[r.strip(self.chars) + "|" + d["answer"][:1] for r in rs]
                for rs, d in zip(resps, docs)]
'''
    metrics = """\
filter_list:
  - name: custom_class
    filter:
      - function: !function utils.Strip
        chars: " ."
      - function: take_first
metric_list:
  - metric: f1
    aggregation: !function utils.pair_f1
    higher_is_better: true
  - metric: acc
    aggregation: !function utils.pair_f1
"""
    write_task(tmp_path, "t_pairs", GEN + metrics, ROWS, utils=utils)
    outputs = [" Paris.", " 5", " blue"]
    ours = score_evalfleet(tmp_path, "t_pairs", outputs)
    theirs = score_lmeval(tmp_path, "t_pairs", outputs)
    assert [r["filtered_resps"] for r in ours.samples] == [
        r["filtered_resps"] for r in theirs["records"]] == [["Paris|P"], ["5|4"], ["blue|B"]]
    assert {k: [list(x) for x in v] for k, v in ours.items.items()} == {
        k: [list(x) for x in v] for k, v in theirs["items"].items()}
    for key, value in theirs["aggregates"].items():
        assert ours.aggregates[key] == pytest.approx(value, abs=1e-12), key
