"""``evalfleet results compare`` as a CI gate: a task or gated metric that one run lacks is
listed and fails ``--fail-if-worse`` (unless ``--allow-missing``); a folder of several results
files whose tasks differ is refused, not silently narrowed to the newest. Runs are lm-eval
results files written from a few numbers (tests/results_files.py), read by the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from results_files import mc_record, results_doc, results_here, write_run
from results_files import results_cli as _cli

from evalfleet.client.cli import build_parser

ACC = {"acc,none": (0.50, 0.05), "acc_norm,none": (0.55, 0.05)}
T1 = "2026-12-06T10-00-00.000001"
T2 = "2026-12-06T11-00-00.000001"


@pytest.fixture()
def lacking(tmp_path) -> tuple[Path, Path]:
    """Run A with arc_easy and piqa, run B (same numbers) with arc_easy only."""
    a = write_run(tmp_path / "a", T1, results_doc({"arc_easy": ACC, "piqa": ACC}))
    b = write_run(tmp_path / "b", T1, results_doc({"arc_easy": ACC}))
    return a, b


def test_fail_if_worse_exits_one_naming_a_task_the_candidate_lacks(lacking, capsys):
    a, b = lacking
    gate = _cli("compare", str(a), str(b), "--fail-if-worse", "acc=0.02")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "MISSING piqa: in A only, not in B" in gate.stderr
    assert "no significant regression" not in gate.stderr
    assert "task piqa: only in A" in gate.stdout  # the listing under the table
    assert "Traceback" not in gate.stderr
    # the other way round (a task only the candidate has) fails the same way
    code, _, err = results_here(capsys, "compare", str(b), str(a), "--fail_if_worse", "acc=0.02")
    assert code == 1 and "MISSING piqa: in B only" in err
    # an explicit --allow-missing lists it and gates only what both runs have
    code, _, err = results_here(capsys, "compare", str(a), str(b), "--fail-if-worse", "acc=0.02",
                            "--allow_missing")
    assert code == 0 and "missing (allowed) piqa" in err and "no significant regression" in err


def test_a_gated_metric_one_run_lacks_fails_and_others_are_listed(tmp_path, capsys):
    a = write_run(tmp_path / "a", T1, results_doc({"arc_easy": ACC}))
    b = write_run(tmp_path / "b", T1, results_doc({"arc_easy": {"acc,none": (0.5, 0.05)}}))
    code, out, err = results_here(capsys, "compare", str(a), str(b), "--fail-if-worse",
                              "acc_norm=0.02")
    assert code == 1 and "MISSING arc_easy acc_norm,none: in A only" in err
    code, out, err = results_here(capsys, "compare", str(a), str(b), "--fail-if-worse", "acc=0.02",
                              "--json", str(tmp_path / "c.json"))
    assert code == 0 and "no significant regression" in err  # acc_norm is not gated
    assert "metric arc_easy acc_norm,none: only in A" in out
    missing = json.loads((tmp_path / "c.json").read_text())["missing"]
    assert missing == [{"task": "arc_easy", "metric": "acc_norm", "filter": "none",
                        "only_in": "A"}]
    code, _, err = results_here(capsys, "compare", str(a), str(b), "--fail-if-worse", "bleu=0")
    assert code == 2 and "--fail-if-worse bleu: no such metric in either run" in err


def test_underscored_and_hyphenated_gate_flags_are_the_same_flag():
    parse = build_parser().parse_args
    hyphen = parse(["results", "compare", "a", "b", "--fail-if-worse", "acc=0.02",
                    "--allow-missing"])
    underscore = parse(["results", "compare", "a", "b", "--fail_if_worse", "acc=0.02",
                        "--allow_missing"])
    assert vars(hyphen) == vars(underscore)
    assert underscore.fail_if_worse == ["acc=0.02"] and underscore.allow_missing is True


@pytest.fixture()
def two_files_one_folder(tmp_path) -> tuple[Path, Path, Path]:
    """A model folder holding an older run of two tasks and a newer run of one."""
    folder = tmp_path / "out" / "models__tiny-smollm2"
    old = write_run(folder, T1, results_doc({"arc_easy": ACC, "piqa": ACC}))
    new = write_run(folder, T2, results_doc({"arc_easy": ACC}))
    return tmp_path / "out", old, new


def test_a_folder_whose_results_files_differ_in_tasks_is_refused(two_files_one_folder):
    out, old, new = two_files_one_folder
    refused = _cli("compare", str(old), str(out), "--fail-if-worse", "acc=0.02")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(f"error: {out}: holds 2 results files with different tasks")
    assert f"{new.name}: arc_easy;" in line and f"{old.name}: arc_easy, piqa" in line
    assert "pass --newest" in line


def test_newest_takes_the_newest_and_says_which(two_files_one_folder, capsys, tmp_path):
    out, old, new = two_files_one_folder
    code, stdout, err = results_here(capsys, "compare", str(old), str(out), "--newest",
                                 "--fail-if-worse", "acc=0.02")
    assert code == 1 and f"note: {out}: took {new.name}, the newest of 2" in err
    assert "whose tasks differ" in err and "MISSING piqa" in err
    code, _, err = results_here(capsys, "show", str(out))  # show takes the newest, and says so
    assert code == 0 and f"took {new.name}" in err
    same = tmp_path / "same"
    write_run(same, T1, results_doc({"arc_easy": ACC}))
    newest = write_run(same, T2, results_doc({"arc_easy": ACC}))
    code, _, err = results_here(capsys, "compare", str(same), str(newest))
    assert code == 0 and "(all with the same tasks)" in err


def test_report_without_samples_counts_the_tasks(lacking, tmp_path, capsys):
    a, _ = lacking
    code, out, _ = results_here(capsys, "report", str(a), "--out", str(tmp_path / "r.html"))
    assert code == 0 and "0 tasks" not in out
    assert "(2 tasks, no documents: no samples files beside" in out and "--log_samples" in out
    b = write_run(tmp_path / "s", T1, results_doc({"arc_easy": ACC, "piqa": ACC}),
                  samples={"piqa": [mc_record(i, i % 2 == 0) for i in range(3)]})
    code, out, _ = results_here(capsys, "report", str(b), "--out", str(tmp_path / "s.html"))
    assert code == 0 and "(2 tasks, 1 with samples: 3 documents)" in out
