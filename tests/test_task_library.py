"""lm-eval's installed task library resolves by name (tasks/library.py): its index is cached on
disk, built-ins win over it, ten library tasks build lm-eval's own requests, the did-you-mean
names lm-eval's names for a guide's ``math``, and the CLI and a coordinator list and run it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from evalfleet.tasks import library
from evalfleet.tasks.errors import TaskError, TaskNotFoundError
from evalfleet.tasks.manager import BUILTIN_DIR, TaskManager
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

REPO = Path(__file__).resolve().parent.parent
#: Library tasks outside the built-ins whose data is in the mirror (generative MMLU and ARC,
#: MMLU continuation and flan, GSM8K's chain of thought, BoolQ as seq2seq, LAMBADA's cloze,
#: TruthfulQA's generation).
TEN = ["arc_challenge_llama", "arc_challenge_chat", "mmlu_astronomy_generative",
       "mmlu_anatomy_continuation", "mmlu_flan_n_shot_loglikelihood_virology",
       "gsm8k_cot_zeroshot", "gsm8k_llama", "boolq-seq2seq", "lambada_openai_cloze_yaml",
       "truthfulqa_gen"]
A_TASK = """task: {name}
dataset_path: allenai/ai2_arc
dataset_name: ARC-Easy
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
tag: tiny_tag
"""


def _report_helpers():
    """scripts/lmeval_library_report.py's request builders (lm-eval's and evalfleet's)."""
    spec = importlib.util.spec_from_file_location(
        "lmeval_library_report", REPO / "scripts" / "lmeval_library_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def small_library(tmp_path, monkeypatch):
    """A library folder of three files (one that cannot be indexed, one with a metric evalfleet
    does not compute) standing in for lm-eval's, with its own index folder."""
    folder = tmp_path / "lm_tasks"
    folder.mkdir()
    (folder / "lib_a.yaml").write_text(A_TASK.format(name="lib_a"))
    (folder / "lib_bad_metric.yaml").write_text(
        A_TASK.format(name="lib_bad_metric") + "metric_list:\n  - metric: rouge2\n")
    (folder / "lib_broken.yaml").write_text("include: missing_base.yaml\ntask: lib_broken\n")
    monkeypatch.setenv(library.INDEX_DIR_ENV, str(tmp_path / "index"))
    library._cached_rows.cache_clear()
    monkeypatch.setattr("evalfleet.tasks.manager.library_entries",
                        lambda: library.library_entries(folder))
    yield folder
    library._cached_rows.cache_clear()


def test_index_is_cached_rebuilt_on_change_and_when_corrupt(small_library, capsys, monkeypatch):
    rows = library.library_rows(small_library, "0.4.13")
    assert "indexing lm-eval's task library (once)" in capsys.readouterr().err
    path = library.cache_file(small_library, "0.4.13")
    assert path.is_file() and path.parent == Path(os.environ[library.INDEX_DIR_ENV])
    assert rows["lib_a"]["dataset_path"] == "allenai/ai2_arc"
    assert rows["lib_a"]["splits"] == [["test_split", "test"]]
    assert rows["tiny_tag"] == {"kind": "tag", "members": ["lib_a", "lib_bad_metric"]}
    assert "missing_base.yaml" in rows["lib_broken"]["error"]

    library._cached_rows.cache_clear()  # a new process: read from disk, nothing indexed
    monkeypatch.setattr(library, "build_rows", lambda folder: pytest.fail("rebuilt"))
    assert library.library_rows(small_library, "0.4.13") == rows
    assert capsys.readouterr().err == ""
    monkeypatch.undo()
    monkeypatch.setenv(library.INDEX_DIR_ENV, str(path.parent))

    assert library.cache_file(small_library, "0.4.14") != path  # another version: own file
    path.write_text('{"format": 1, "lm_eval_version": "0.4.13", "entr')  # corrupt
    library._cached_rows.cache_clear()
    assert library.library_rows(small_library, "0.4.13") == rows
    assert "indexing" in capsys.readouterr().err
    assert json.loads(path.read_text())["entries"] == rows  # rewritten whole
    assert not list(path.parent.glob("*.tmp"))
    assert library.warm(small_library) == f"lm-eval's task library: {len(rows)} names indexed " \
        f"in {library.cache_file(small_library, library.lmeval_version())}"


def test_library_names_resolve_and_failures_stay_their_own(small_library, data_dir):
    manager = TaskManager(data_dir=data_dir)
    listed = {e.name: e for e in manager.list()}
    assert listed["lib_a"].in_mirror and listed["lib_a"].yaml_path == small_library / "lib_a.yaml"
    assert "missing_base.yaml" in listed["lib_broken"].error  # marked in the listing
    assert "unknown metric 'rouge2'" in listed["lib_bad_metric"].error
    assert listed["lib_a"].error is None
    assert listed["arc_easy"].yaml_path.is_relative_to(BUILTIN_DIR)  # built-ins stay
    assert manager.load(["lib_a"]).tasks["lib_a"].build_requests(limit=1)
    with pytest.raises(TaskError, match="rouge2"):
        manager.load(["lib_bad_metric"]).tasks["lib_bad_metric"]
    with pytest.raises(TaskError, match="missing_base.yaml"):
        manager.load(["lib_broken"])
    assert manager.load(["lib_a@generate"]).roots == ["lib_a@generate"]  # formats still work


def test_builtins_win_over_the_library_without_a_duplicate_warning(tmp_path, monkeypatch,
                                                                   data_dir, capsys):
    folder = tmp_path / "lm_tasks"
    folder.mkdir()
    (folder / "arc_easy.yaml").write_text(A_TASK.format(name="arc_easy").replace(
        "ARC-Easy", "ARC-Challenge"))
    monkeypatch.setenv(library.INDEX_DIR_ENV, str(tmp_path / "index"))
    library._cached_rows.cache_clear()
    monkeypatch.setattr("evalfleet.tasks.manager.library_entries",
                        lambda: library.library_entries(folder))
    manager = TaskManager(data_dir=data_dir)
    task = manager.load(["arc_easy"]).tasks["arc_easy"]
    assert task.cfg.source.is_relative_to(BUILTIN_DIR) and task.cfg.dataset_name == "ARC-Easy"
    assert "defined by" not in capsys.readouterr().err
    library._cached_rows.cache_clear()


def test_the_installed_library_lists_and_loads_by_name(data_dir):
    manager = TaskManager(data_dir=data_dir)
    listed = {e.name: e for e in manager.list()}
    assert sum(e.kind == "task" for e in listed.values()) >= 12800
    for name in ("mmlu_generative", "leaderboard", "bbh", "ifeval", "hendrycks_math",
                 "minerva_math", "gpqa_main_zeroshot"):
        assert name in listed, name
    assert listed["arc_challenge_llama"].in_mirror and not listed["ifeval"].in_mirror
    assert listed["mmlu_generative"].kind == "group"
    from evalfleet.reporting.task_tables import _location  # --tasks list: lm-eval's form

    assert _location(listed["mmlu_generative"].yaml_path) == \
        "lm_eval/tasks/mmlu/generative/_mmlu.yaml"
    assert listed["arc_easy"].yaml_path.is_relative_to(BUILTIN_DIR)
    with pytest.raises(TaskNotFoundError) as err:
        manager.load(["math"])
    assert err.value.suggestions[:2] == ["hendrycks_math", "minerva_math"]


@pytest.mark.reference
def test_ten_library_tasks_build_lm_evals_requests(data_dir, lmeval_task_dir):
    from lm_eval.tasks import TaskManager as LmTaskManager

    report = _report_helpers()
    manager = TaskManager(data_dir=data_dir)
    theirs_manager = LmTaskManager(include_path=str(lmeval_task_dir), include_defaults=False)
    builtin = {p.stem for p in BUILTIN_DIR.glob("**/*.yaml")}
    for name in TEN:
        assert name not in builtin
        task = manager.load([name]).tasks[name]
        ours = report.evalfleet_requests(task, 3)
        theirs = report.lmeval_requests(theirs_manager, name, 3)
        assert ours and not report.first_difference(ours, theirs), name


def test_cli_tasks_list_and_did_you_mean(data_dir):
    env = {**os.environ, "EVALFLEET_DATA_DIR": str(data_dir)}
    cli = [sys.executable, "-m", "evalfleet.client.cli"]
    listed = subprocess.run([*cli, "tasks", "list", "--json"], capture_output=True, text=True,
                            env=env, timeout=120, check=True)
    rows = {r["name"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert len(rows) >= 12800 and rows["arc_challenge_llama"]["in_mirror"] is True
    wrong = subprocess.run([*cli, "tasks", "show", "math"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "unknown task 'math'; did you mean hendrycks_math, minerva_math" in wrong.stderr


def test_a_coordinator_lists_the_library(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        tasks = stub.ListTasks(cpb.ListTasksRequest(), timeout=60).tasks
    by_name = {t.name: t for t in tasks}
    assert len(by_name) >= 12800
    assert by_name["mmlu_astronomy_generative"].data_available
    assert by_name["arc_challenge_llama"].output_type == "generate_until"


def test_without_lm_eval_an_unknown_name_says_how_to_install_the_library(monkeypatch, data_dir):
    monkeypatch.setattr(library, "lmeval_task_library", lambda: None)
    manager = TaskManager(data_dir=data_dir)
    assert "arc_easy" in manager.names() and "arc_challenge_llama" not in manager.names()
    with pytest.raises(TaskNotFoundError, match=r"pip install evalfleet\[tasks\]"):
        manager.load(["arc_challenge_llama"])
    without = TaskManager(data_dir=data_dir, include_library=False)  # asked not to: no note
    with pytest.raises(TaskNotFoundError) as err:
        without.load(["no_such_task_anywhere"])
    assert "pip install" not in str(err.value)
