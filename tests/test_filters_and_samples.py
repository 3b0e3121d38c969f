"""Filters get the documents where lm-eval passes them, and samples records have lm-eval's exact
shapes (nesting, not only values) for every request kind."""

from __future__ import annotations

import json

import pytest
from parity_values import metric_values, value_differences
from scoring_harness import score_evalfleet, score_lmeval, write_task

ROWS = [
    {"question": "Which is red?", "choices": ["grass", "blood", "sky"], "label": 1,
     "text": "The cat sat on the mat. It was warm."},
    {"question": "Which is cold?", "choices": ["ice", "fire", "sun"], "label": 0,
     "text": "Rain fell all day  and\nthe river rose."},
]
MC_REGEX = """\
output_type: generate_until
doc_to_text: "{{question}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nAnswer:"
doc_to_target: "{{['(A)', '(B)', '(C)'][label]}}"
generation_kwargs:
  until: ["\\n\\n"]
filter_list:
  - name: flexible
    filter:
      - function: multi_choice_regex
        regex_pattern: "(\\\\([A-C]\\\\))"
        ignore_case: true
        ignore_punctuation: true
      - function: take_first
metric_list:
  - metric: exact_match
"""


@pytest.mark.reference
def test_multi_choice_regex_gets_the_documents(tmp_path):
    """multi_choice_regex reads doc["choices"]: the choice text, then ': X', as lm-eval."""
    write_task(tmp_path, "t_mcre", MC_REGEX, ROWS)
    outputs = [" I think it is Blood!", " answer: A"]
    ours = score_evalfleet(tmp_path, "t_mcre", outputs)
    theirs = score_lmeval(tmp_path, "t_mcre", outputs)
    assert [r["filtered_resps"] for r in ours.samples] == [["(B)"], ["(A)"]]
    assert [r["filtered_resps"] for r in ours.samples] == [
        r["filtered_resps"] for r in theirs["records"]]
    assert [r["exact_match"] for r in ours.samples] == theirs["items"][
        ("exact_match", "flexible")] == [1.0, 1.0]
    assert ours.aggregates["exact_match,flexible"] == theirs["aggregates"]["exact_match,flexible"]


KINDS = {
    "rolling": ("output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
                "doc_to_target: '{{text}}'\n", [-411.5, -37.25]),
    "loglikelihood": ("output_type: loglikelihood\ndoc_to_text: '{{question}}'\n"
                      "doc_to_target: ' {{choices[label]}}'\n", [(-1.5, True), (-2.25, False)]),
    "multiple_choice": ("output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
                        "doc_to_target: label\ndoc_to_choice: '{{choices}}'\n",
                        [(-1.0, False), (-0.5, True), (-3.0, False)] * 2),
    "generate_until": ("output_type: generate_until\ndoc_to_text: '{{question}}'\n"
                       "doc_to_target: '{{choices[label]}}'\n", ["blood", " fire"]),
}


@pytest.mark.reference
@pytest.mark.parametrize("kind", list(KINDS))
def test_samples_have_lm_eval_shapes(tmp_path, kind):
    """rolling resps are [["-411.5"]] (requests x repeats), as lm-eval writes them."""
    yaml_text, responses = KINDS[kind]
    write_task(tmp_path, f"t_{kind}", yaml_text, ROWS)
    ours = score_evalfleet(tmp_path, f"t_{kind}", responses)
    theirs = score_lmeval(tmp_path, f"t_{kind}", responses)
    mine = [json.loads(json.dumps(r)) for r in ours.samples]
    assert len(mine) == len(theirs["records"])
    for record, ref in zip(mine, theirs["records"], strict=True):
        assert record["resps"] == ref["resps"], kind
        assert record["filtered_resps"] == ref["filtered_resps"], kind
        assert record["metrics"] == ref["metrics"]
        # the values under those names, equal to lm-eval's process_results for the document
        expected = {m: theirs["items"][(m, ref["filter"])][ref["doc_id"]] for m in ref["metrics"]}
        diffs = value_differences(metric_values(record, ref["metrics"]), expected,
                                  f"{kind} doc {ref['doc_id']}", rel=0)
        assert not diffs, diffs
    if kind == "rolling":
        assert mine[0]["resps"] == [["-411.5"]] and mine[0]["filtered_resps"] == ["-411.5"]


@pytest.mark.reference
def test_regex_pos_and_format_span_equal_lm_eval():
    """The two filters lm-eval's afrobench NER/POS tasks use (200 tasks of its library)."""
    from lm_eval.filters.extraction import POSFilter as LmPOS
    from lm_eval.filters.transformation import SPANFilter as LmSpan

    from evalfleet.tasks.filters import get_filter

    pos = [["[('The', 'DET'), ('cat', 'NOUN')]", "no tags here", "('a', 'X') ('b', 'Y')"]]
    spans = [["Person: Ada Lovelace, none $$ LOCATION: London\norg: Acme $$",
              "PER: none", "Country: Kenya, Uganda $$ date: 1990$$", "nothing"]]
    docs = [{}]
    assert get_filter("regex_pos")().apply(pos, docs) == list(LmPOS().apply(pos, docs))
    assert get_filter("format_span")().apply(spans, docs) == list(LmSpan().apply(spans, docs))
    assert get_filter("format_span")().apply(spans, docs)[0][0] == (
        "per: ada lovelace $ loc: london $ org: acme")
