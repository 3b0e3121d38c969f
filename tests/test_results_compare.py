"""``evalfleet results show|compare``: the statistics against scipy, and the CLI on two real runs
(arc_easy by the tiny model and by SmolLM2-135M, samples logged)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from results_files import results_cli as _cli
from results_files import results_here as _results
from scipy import stats

from evalfleet.reporting.compare import compare_runs, parse_thresholds, regressions
from evalfleet.reporting.runs import Run, find_results_file, load_run
from evalfleet.reporting.stats import MCNEMAR, PAIRED_T, UNPAIRED, paired_test, unpaired_test


def _mcnemar_scipy(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    worse, better = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    if worse + better == 0:
        return 1.0
    return stats.binomtest(better, worse + better, 0.5).pvalue


@pytest.mark.parametrize("seed", range(6))
def test_paired_t_agrees_with_scipy_ttest_rel(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.5, 0.2, size=30 + 10 * seed)
    b = a + rng.normal(0.03 * seed, 0.1, size=a.size)
    result = paired_test(a, b)
    expected = stats.ttest_rel(b, a)
    assert result.method == PAIRED_T and result.n == a.size
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-15)
    assert result.diff == pytest.approx(np.mean(b - a))
    assert result.se == pytest.approx(np.std(b - a, ddof=1) / np.sqrt(a.size))


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_agrees_with_scipy_binomtest(seed):
    rng = np.random.default_rng(100 + seed)
    a = (rng.random(50 + 20 * seed) < 0.5).astype(float)
    flip = rng.random(a.size) < 0.1 + 0.05 * seed
    b = np.where(flip, 1.0 - a, a)
    result = paired_test(a, b)
    assert result.method == MCNEMAR
    assert result.p_value == pytest.approx(_mcnemar_scipy(a, b), rel=1e-9, abs=1e-15)


def test_identical_and_unpaired_cases():
    same = paired_test([1, 0, 1], [1, 0, 1])
    assert same.p_value == 1.0 and same.diff == 0.0
    z = unpaired_test(0.50, 0.02, 0.40, 0.02)
    assert z.method == UNPAIRED
    assert z.p_value == pytest.approx(2 * stats.norm.sf(0.1 / np.hypot(0.02, 0.02)))
    assert unpaired_test(0.5, None, 0.4, 0.02).p_value is None


def _run(results: dict, samples: dict | None = None) -> Run:
    from pathlib import Path

    return Run(Path("x.json"), results, samples or {}, "x")


def test_unequal_documents_fall_back_to_stderrs():
    results_a = {"results": {"t": {"acc,none": 0.5, "acc_stderr,none": 0.1}},
                 "higher_is_better": {"t": {"acc": True}}}
    results_b = {"results": {"t": {"acc,none": 1.0, "acc_stderr,none": 0.0}}}
    a = _run(results_a, {"t": [{"doc_id": 0, "doc_hash": "h0", "filter": "none", "acc": 1.0},
                               {"doc_id": 1, "doc_hash": "h1", "filter": "none", "acc": 0.0}]})
    b = _run(results_b, {"t": [{"doc_id": 0, "doc_hash": "OTHER", "filter": "none", "acc": 1.0},
                               {"doc_id": 1, "doc_hash": "h1", "filter": "none", "acc": 1.0}]})
    [row] = compare_runs(a, b)
    assert row.test.method == UNPAIRED and row.higher_is_better is True
    assert row.worse_by == pytest.approx(-0.5)


def test_fail_if_worse_thresholds():
    with pytest.raises(Exception, match="METRIC=DELTA"):
        parse_thresholds(["acc"])
    [t] = parse_thresholds(["acc_norm,none=0.02"])
    assert (t.metric, t.filter, t.delta) == ("acc_norm", "none", 0.02)


def test_find_results_file_accepts_what_eval_was_given(two_model_runs, tmp_path):
    tiny = two_model_runs["tiny"]
    assert find_results_file(tiny) == tiny
    assert find_results_file(tiny.parent) == tiny
    assert find_results_file(tiny.parent.parent) == tiny
    run = load_run(tiny)
    assert len(run.samples["arc_easy"]) == 40 and run.model_name.endswith("tiny-smollm2")


def test_results_show_prints_lm_eval_table(two_model_runs):
    result = _cli("show", str(two_model_runs["real"].parent.parent))
    assert result.returncode == 0, result.stderr
    assert "|arc_easy|" in result.stdout.replace(" ", "")
    assert "acc_norm" in result.stdout and "limit: 40.0" in result.stdout


def test_compare_two_models_p_values_agree_with_scipy(two_model_runs, tmp_path):
    report = tmp_path / "compare.json"
    result = _cli("compare", str(two_model_runs["tiny"]), str(two_model_runs["real"]),
                  "--json", str(report))
    assert result.returncode == 0, result.stderr
    rows = {r["metric"]: r for r in json.loads(report.read_text())["rows"]}
    assert set(rows) == {"acc", "acc_norm"}
    tiny = load_run(two_model_runs["tiny"]).samples["arc_easy"]
    real = load_run(two_model_runs["real"]).samples["arc_easy"]
    assert [r["doc_id"] for r in tiny] == [r["doc_id"] for r in real]
    for metric, row in rows.items():
        a = np.array([r[metric] for r in tiny])
        b = np.array([r[metric] for r in real])
        assert row["method"] == MCNEMAR and row["n"] == 40
        assert row["a"] == pytest.approx(a.mean()) and row["b"] == pytest.approx(b.mean())
        assert row["diff"] == pytest.approx((b - a).mean())
        assert row["se"] == pytest.approx(stats.sem(b - a))
        assert row["p_value"] == pytest.approx(_mcnemar_scipy(a, b), rel=1e-9, abs=1e-15)
        # and the paired t-test path on the same documents agrees with scipy's ttest_rel
        t = paired_test(a + 0.25 * (a == 1), b + 0.25 * (b == 1))
        assert t.method == PAIRED_T
        assert t.p_value == pytest.approx(
            stats.ttest_rel(b + 0.25 * (b == 1), a + 0.25 * (a == 1)).pvalue, rel=1e-9)
    assert "McNemar exact" in result.stdout and "B-A" in result.stdout


def test_fail_if_worse_exits_one_on_a_significant_regression(two_model_runs, capsys):
    real, tiny = str(two_model_runs["real"]), str(two_model_runs["tiny"])
    rows = compare_runs(load_run(real), load_run(tiny))
    acc = next(r for r in rows if r.metric == "acc")
    assert acc.worse_by > 0.05 and acc.test.p_value < 0.05, acc  # SmolLM2 beats random weights
    worse = _cli("compare", real, tiny, "--fail-if-worse", "acc=0.05")
    assert worse.returncode == 1, worse.stderr
    assert "REGRESSION arc_easy acc,none" in worse.stderr
    code, _, err = _results(capsys, "compare", tiny, real, "--fail-if-worse", "acc=0.05")
    assert code == 0 and "no significant regression" in err
    code, _, _ = _results(capsys, "compare", real, tiny, "--fail-if-worse",
                          f"acc={acc.worse_by + 0.01}")
    assert code == 0
    assert regressions(rows, parse_thresholds(["acc=0.05"]), alpha=acc.test.p_value / 2) == []
    code, _, err = _results(capsys, "compare", real, tiny, "--fail-if-worse", "bleu=0")
    assert code == 2 and "bleu" in err
