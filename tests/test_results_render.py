"""What ``results report`` and ``results plot`` show a person: configuration values as they are
written (no Python reprs), lm-eval's filter names explained or left out where they say nothing,
and charts with labelled values, explained error bars, each run's n/limit/shots and a marked slot
where a run lacks a task."""

from __future__ import annotations

import re

from results_files import mc_record, results_doc, write_run

from evalfleet.client.cli import build_parser
from evalfleet.client.results_command import run_results
from evalfleet.reporting.report import render_report
from evalfleet.reporting.runs import load_run

T1 = "2026-12-06T10-00-00.000001"


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


def test_report_shows_human_values_and_no_lone_filter_name(tmp_path):
    path = write_run(tmp_path, T1, results_doc({"arc_easy": {"acc,none": (0.5, 0.1)}}),
                     samples={"arc_easy": [mc_record(i, i != 1) for i in range(3)]})
    html = render_report(load_run(path))
    meta = _text(re.search(r"<p class=meta>(.*?)</p>", html).group(1))
    assert "limit 30 documents per task" in meta and "num_fewshot 0 (task default)" in meta
    assert "(pretrained=models/tiny-smollm2, dtype=float32)" in meta
    for repr_text in ("30.0", "None", "{'"):
        assert repr_text not in meta, meta
    docids = re.findall(r'<td class="docid">(.*?)</td>', html)
    assert docids == ["0", "1", "2"]  # the only filter, lm-eval's "none", is not repeated
    assert "none means the raw answers" in _text(html)  # the results table's Filter explained


def test_report_marks_the_filter_of_each_row_where_a_task_has_several(tmp_path):
    records = [mc_record(0, True, "strict-match"), mc_record(0, False, "flexible-extract")]
    doc = results_doc({"gsm8k": {"acc,strict-match": (1.0, 0.0),
                                 "acc,flexible-extract": (0.0, 0.0)}}, limit=None,
                      num_fewshot=5)
    html = render_report(load_run(write_run(tmp_path, T1, doc, samples={"gsm8k": records})))
    assert "limit none (all documents)" in html and "num_fewshot 5," in html
    assert [_text(c) for c in re.findall(r'<td class="docid">(.*?)</td>', html)] \
        == ["0filter strict-match", "0filter flexible-extract"]
    assert "one row per document and filter: strict-match, flexible-extract" in html


def test_plot_labels_values_explains_bars_and_marks_a_missing_task(tmp_path, capsys):
    both = {"acc,none": (0.412, 0.031)}
    a = write_run(tmp_path / "a", T1, results_doc({"arc_easy": both, "piqa": both}, n=40,
                                                  limit=40.0))
    b = write_run(tmp_path / "b", T1, results_doc({"arc_easy": {"acc,none": (0.377, 0.03)}}))
    out = tmp_path / "chart.svg"
    args = build_parser().parse_args(["results", "plot", str(a), str(b), "--out", str(out)])
    assert run_results(args) == 0 and f"wrote {out}" in capsys.readouterr().out
    svg = out.read_text()
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert texts.count("0.412") == 2 and texts.count("0.377") == 1  # every bar labelled
    assert texts.count("missing") == 1  # piqa's slot in run B
    joined = " ".join(texts)
    assert "n=40, limit 40, 0-shot" in joined and "n=30, limit 30, 0-shot" in joined
    assert "± 1 standard error as lm-eval reports it" in joined
    assert "missing from that run" in joined
