"""``evalfleet gate``: a release gate on two runs under a policy YAML. Runs are lm-eval results
files written from a few numbers and per-document records (tests/results_files.py), judged by
the real CLI (GO 0, NO-GO 1, INCONCLUSIVE 3, bad input 2); the power the gate relies on is
checked against simulations of the very tests ``results compare`` runs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from results_files import mc_record, results_doc, write_run

from evalfleet.client.cli import main
from evalfleet.reporting.gate_power import mcnemar_power, paired_t_power
from evalfleet.reporting.stats import mcnemar_exact, paired_t

STAMP = "2026-12-06T10-00-00.000001"
POLICY = """\
alpha: 0.05
power: 0.8
tasks:
  arc_easy:
    required: true
    metrics:
      acc: {floor: 0.25, max_regression: 0.05}
  piqa:
    metrics:
      acc: {max_regression: 0.05}
"""


def _run(folder: Path, rights: list[bool], *, task: str = "arc_easy",
         samples: bool = True) -> Path:
    """A run of ``task`` whose document i is right when ``rights[i]``."""
    n = len(rights)
    acc = sum(rights) / n
    se = math.sqrt(acc * (1 - acc) / (n - 1))
    doc = results_doc({task: {"acc,none": (acc, se)}}, n=n)
    doc["n-samples"][task]["original"] = 2376
    records = {task: [mc_record(i, r) for i, r in enumerate(rights)]} if samples else None
    return write_run(folder, STAMP, doc, samples=records)


def _gate(capsys, *args: str) -> tuple[int, dict, str]:
    """``evalfleet gate ... --json`` in this process: (exit code, verdict, stderr)."""
    code = main(["gate", *args, "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else {}), out.err


def _checks(verdict: dict, kind: str) -> list[dict]:
    return [c for c in verdict["checks"] if c["kind"] == kind]


@pytest.fixture()
def policy(tmp_path) -> Path:
    path = tmp_path / "gate.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


def test_go_no_go_and_inconclusive_with_their_exit_codes(tmp_path, policy, capsys):
    half = [i % 2 == 0 for i in range(400)]
    base = _run(tmp_path / "base", half)
    # GO: same answers on 400 documents; piqa (not required) is in neither run: skipped
    code, verdict, _ = _gate(capsys, "--policy", str(policy), str(base),
                             str(_run(tmp_path / "same", half)))
    assert (code, verdict["verdict"], verdict["exit_code"]) == (0, "GO", 0)
    (regression,) = _checks(verdict, "regression")
    assert regression["status"] == "PASS" and regression["test"] == "McNemar exact"
    assert regression["n"] == 400 and regression["power"] >= 0.8
    assert [c["status"] for c in verdict["checks"] if c["task"] == "piqa"] == ["SKIPPED"]
    assert verdict["policy"]["sha256"] == hashlib.sha256(policy.read_bytes()).hexdigest()

    # NO-GO: a significant drop beyond max_regression (0.50 -> 0.25; 0.25 meets the floor)
    quarter = [i % 4 == 0 for i in range(400)]
    code, verdict, _ = _gate(capsys, "--policy", str(policy), str(base),
                             str(_run(tmp_path / "worse", quarter)))
    assert (code, verdict["verdict"]) == (1, "NO-GO")
    (regression,) = _checks(verdict, "regression")
    assert regression["status"] == "FAIL" and regression["p_value"] < 1e-6
    assert regression["diff"] == pytest.approx(-0.25)
    assert [c["status"] for c in _checks(verdict, "floor")] == ["PASS"]
    assert verdict["reasons"] == [regression["message"]]

    # NO-GO: the floor crossed, with no regression (both runs at 0.20)
    low = [i % 5 == 0 for i in range(400)]
    code, verdict, _ = _gate(capsys, "--policy", str(policy), str(_run(tmp_path / "l1", low)),
                             str(_run(tmp_path / "l2", low)))
    assert (code, verdict["verdict"]) == (1, "NO-GO")
    (floor,) = _checks(verdict, "floor")
    assert floor["status"] == "FAIL" and "worse than the floor (minimum 0.2500" in \
        floor["message"]
    assert _checks(verdict, "regression")[0]["status"] == "PASS"

    # NO-GO: the required task missing from the candidate (it ran piqa only)
    code, verdict, _ = _gate(capsys, "--policy", str(policy), str(base),
                             str(_run(tmp_path / "piqa", half, task="piqa")))
    assert (code, verdict["verdict"]) == (1, "NO-GO")
    required = [c for c in _checks(verdict, "required") if c["task"] == "arc_easy"]
    assert required[0]["status"] == "FAIL"
    assert required[0]["message"] == ("arc_easy: required, missing from the candidate (B)")

    # INCONCLUSIVE: 20 documents cannot show that a drop of 0.05 is absent
    small = half[:20]
    code, verdict, _ = _gate(capsys, "--policy", str(policy), str(_run(tmp_path / "s1", small)),
                             str(_run(tmp_path / "s2", small)))
    assert (code, verdict["verdict"]) == (3, "INCONCLUSIVE")
    (regression,) = _checks(verdict, "regression")
    assert regression["status"] == "INCONCLUSIVE" and regression["power"] < 0.2
    # a drop of 0.05 needs at least 5% of documents to change: Connor's n for psi = 0.05 is
    # 155, and the exact test (slightly conservative) needs a few more
    assert 155 <= regression["documents_needed"] <= 200
    assert f"about {regression['documents_needed']} documents per run are needed for power " \
           "0.8 (of arc_easy's 2376: --limit" in regression["message"]


def test_unpaired_runs_advisory_checks_and_the_markdown_comment(tmp_path, capsys):
    """Runs without samples are judged by the z-test on their stderrs (documents needed scale
    with n-samples); an advisory check's failure is reported and does not change the verdict."""
    policy = tmp_path / "p.yaml"
    policy.write_text("tasks:\n  arc_easy:\n    metrics:\n      acc: {max_regression: 0.05}\n"
                      "  piqa:\n    tier: advisory\n    metrics:\n      acc: {floor: 0.9}\n")
    a = write_run(tmp_path / "a", STAMP, results_doc(
        {"arc_easy": {"acc,none": (0.50, 0.05)}, "piqa": {"acc,none": (0.6, 0.05)}}, n=30))
    b = write_run(tmp_path / "b", STAMP, results_doc(
        {"arc_easy": {"acc,none": (0.51, 0.05)}, "piqa": {"acc,none": (0.6, 0.05)}}, n=30))
    markdown = tmp_path / "comment.md"
    code, verdict, err = _gate(capsys, "--policy", str(policy), str(a), str(b),
                               "--markdown", str(markdown))
    assert (code, verdict["verdict"]) == (3, "INCONCLUSIVE"), verdict
    (regression,) = _checks(verdict, "regression")
    assert regression["test"] == "z-test on stderrs"
    se = math.sqrt(2) * 0.05
    assert regression["power"] == pytest.approx(
        0.5 * math.erfc((1.959964 - 0.05 / se) / math.sqrt(2))
        + 0.5 * math.erfc((1.959964 + 0.05 / se) / math.sqrt(2)), abs=1e-4)
    assert regression["documents_needed"] == math.ceil(30 * (se * (1.959964 + 0.841621)
                                                             / 0.05) ** 2)
    (advisory,) = [c for c in verdict["checks"] if c["task"] == "piqa"]
    assert advisory["status"] == "FAIL" and advisory["tier"] == "advisory"
    assert verdict["reasons"] == [regression["message"]]
    text = markdown.read_text(encoding="utf-8")
    assert text.startswith("## Release gate: ⚠️ INCONCLUSIVE")
    assert "|INCONCLUSIVE|regression|arc_easy|acc,none|0.5000|0.5100|+0.0100|" \
           in text.replace(" ", "")
    assert "|FAIL(advisory)|floor|piqa|acc,none||0.6000|" in text.replace(" ", "")
    assert f"wrote {markdown}" in err


def test_the_command_prints_one_json_object_and_exits_with_the_verdict(tmp_path, policy):
    """As a CI job runs it: its own process; stdout is exactly one JSON object."""
    half = [i % 2 == 0 for i in range(400)]
    base = _run(tmp_path / "a", half)
    worse = _run(tmp_path / "b", [i % 4 == 0 for i in range(400)])
    result = subprocess.run(
        [sys.executable, "-m", "evalfleet.client.cli", "gate", "--policy",
         str(REPO_ROOT / "examples" / "gate.yaml"), str(base.parent), str(worse.parent),
         "--json"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env=os.environ.copy())
    assert result.returncode == 1, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "NO-GO" and result.stdout.count("\n") == 1
    assert {(c["kind"], c["status"]) for c in verdict["checks"]} == {
        ("required", "PASS"), ("floor", "PASS"), ("regression", "FAIL")}


@pytest.mark.parametrize(("policy_text", "message"), [
    ("tasks:\n  arc_easy:\n    metrics:\n      acc: {max_regression: 0}\n",
     "tasks.arc_easy.metrics.acc.max_regression: must be a number > 0"),
    ("alpha: 2\ntasks:\n  arc_easy: {required: true}\n", "alpha: must be between 0 and 1"),
    ("tasks:\n  arc_easy: {requried: true}\n", "tasks.arc_easy: unknown key requried"),
    ("tasks:\n  arc_easy:\n    metrics:\n      acc_nrom: {floor: 0.3}\n",
     "tasks.arc_easy.metrics.acc_nrom: no run has this metric for arc_easy (it has acc,none)"),
    ("tasks: [arc_easy\n", "YAML: "),
    ("thresholds: {}\n", "top level: unknown key thresholds"),
    ("tasks:\n  arc_easy: {tier: optional, required: true}\n",
     "tasks.arc_easy.tier: must be one of blocking, advisory"),
])
def test_a_bad_policy_is_one_line_naming_the_key(tmp_path, capsys, policy_text, message):
    run = _run(tmp_path / "a", [True, False] * 10)
    policy = tmp_path / "bad.yaml"
    policy.write_text(policy_text, encoding="utf-8")
    code = main(["gate", "--policy", str(policy), str(run), str(run)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: gate policy {policy}: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_mcnemar_power_is_the_exact_tests_power():
    """The power the gate quotes is what McNemar's exact test achieves: simulated documents
    (20% discordant, 6 points more drops than gains) are rejected as often as it says."""
    rng = np.random.default_rng(7)
    n, psi, delta = 200, 0.2, 0.06
    observed_a = np.array([1.0] * 20 + [0.0] * 180)
    observed_b = np.array([0.0] * 20 + [1.0] * 20 + [0.0] * 160)
    power = mcnemar_power(observed_a, observed_b, delta, 0.05, 0.8)
    trials = 1500
    rejected = 0
    for _ in range(trials):
        discordant = rng.random(n) < psi
        drop = discordant & (rng.random(n) < (psi + delta) / (2 * psi))
        a = np.where(drop, 1.0, np.where(discordant, 0.0, 1.0))
        b = np.where(drop, 0.0, 1.0)
        rejected += mcnemar_exact(a, b) < 0.05
    assert power.power == pytest.approx(rejected / trials, abs=0.04)
    assert 0.3 < power.power < 0.6 and power.documents_needed > n


def test_paired_t_power_matches_simulation():
    rng = np.random.default_rng(11)
    d = rng.normal(0.0, 0.3, 50)
    power = paired_t_power(np.zeros(50), d, 0.1, 0.05, 0.8)
    sd = float(np.std(d, ddof=1))
    rejected = sum(paired_t(rng.normal(-0.1, sd, 50))[0] < 0.05 for _ in range(1500))
    assert power.power == pytest.approx(rejected / 1500, abs=0.04)
    at_needed = sum(paired_t(rng.normal(-0.1, sd, power.documents_needed))[0] < 0.05
                    for _ in range(1000)) / 1000
    assert at_needed == pytest.approx(0.8, abs=0.04)


def test_bonferroni_correction_divides_alpha_among_the_regression_tests(tmp_path, capsys):
    """Two tasks each 6 documents worse (McNemar p = 2 * 0.5**6 = 0.031): NO-GO at alpha 0.05
    per test; with ``correction: bonferroni`` each test is at 0.025 and neither drop is
    significant, so the verdict is INCONCLUSIVE (a drop beyond max_regression, not shown)."""
    right = [i % 2 == 0 for i in range(400)]
    worse = [r and i >= 12 for i, r in enumerate(right)]  # documents 0, 2, ..., 10 now wrong
    runs = []
    for name, rights in (("a", right), ("b", worse)):
        acc = sum(rights) / 400
        records = [mc_record(i, r) for i, r in enumerate(rights)]
        runs.append(write_run(tmp_path / name, STAMP, results_doc(
            {t: {"acc,none": (acc, 0.025)} for t in ("arc_easy", "piqa")}, n=400),
            samples={"arc_easy": records, "piqa": records}))
    rules = ("tasks:\n  arc_easy:\n    metrics: {acc: {max_regression: 0.01}}\n"
             "  piqa:\n    metrics: {acc: {max_regression: 0.01}}\n")
    for correction, code, verdict_name, status in (("none", 1, "NO-GO", "FAIL"),
                                                   ("bonferroni", 3, "INCONCLUSIVE",
                                                    "INCONCLUSIVE")):
        policy = tmp_path / f"{correction}.yaml"
        policy.write_text(f"correction: {correction}\n{rules}", encoding="utf-8")
        got, verdict, _ = _gate(capsys, "--policy", str(policy), *map(str, runs))
        assert (got, verdict["verdict"]) == (code, verdict_name)
        tests = _checks(verdict, "regression")
        assert [c["status"] for c in tests] == [status, status]
        assert tests[0]["p_value"] == pytest.approx(2 * 0.5 ** 6)
        assert verdict["policy"]["regression_tests"] == 2
        assert verdict["policy"]["alpha_per_test"] == (0.05 if correction == "none" else 0.025)
    assert "dropped 0.0150, more than 0.01, but not significantly" in tests[0]["message"]
