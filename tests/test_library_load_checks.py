"""The task listing marks the library tasks that cannot load, with the reason naming them gives
(tasks/load_checks.py: their modules' imports read with ``ast``, checked against the
environment when listed), and stops marking one once what it lacks is installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ACCEPTANCE
from test_task_library import A_TASK

from evalfleet.tasks import library, load_checks
from evalfleet.tasks.errors import TaskError
from evalfleet.tasks.manager import TaskManager

#: name -> (extra YAML, module files the task's code lives in)
TASKS = {
    "lib_fine": ("", {}),
    "lib_needs_pkg": ("process_docs: !function utils_missing.process_docs\n", {
        "utils_missing.py": "import json\nimport evalfleet_h4_absent_pkg.sub\n\n\n"
                            "def process_docs(ds):\n    return ds\n"}),
    "lib_says_why": ("process_docs: !function utils_said.process_docs\n", {
        "utils_said.py": "try:\n    import evalfleet_h4_absent_two\nexcept ModuleNotFoundError "
                         "as e:\n    raise type(e)(\n        'evalfleet_h4_absent_two is '\n"
                         "        'required: pip install it'\n    ) from e\n\n\n"
                         "def process_docs(ds):\n    return ds\n"}),
    "lib_scoring_only": ("process_results: !function utils_late.process_results\n", {
        "utils_late.py": "def process_results(doc, results):\n"
                         "    import evalfleet_h4_absent_three\n    return {'acc': 1.0}\n"}),
    "lib_bad_metric": ("metric_list:\n  - metric: no_such_metric_h4\n", {}),
    "lib_by_name": ("process_results: !function lm_eval.tasks.xquad.utils.process_results_qa\n",
                    {}),
    "lib_exits": ("process_docs: !function utils_exit.process_docs\n", {
        "utils_exit.py": "import shutil\nimport sys\n\n"
                         "if shutil.which('evalfleet-h4-absent-tool') is None:\n"
                         "    sys.exit('Error: evalfleet-h4-absent-tool is not on PATH')\n"}),
    "lib_class": ("class: !function classes.NeedsTool\n", {
        "classes.py": "import shutil\n\n\ndef check():\n"
                      "    if shutil.which('evalfleet-h4-absent-tool') is None:\n"
                      "        raise RuntimeError('install evalfleet-h4-absent-tool')\n\n\n"
                      "class Base:\n    DATASET_PATH = 'allenai/ai2_arc'\n\n\n"
                      "class NeedsTool(Base):\n    DATASET_NAME = 'ARC-Easy'\n\n"
                      "    def __init__(self, config=None):\n"
                      "        check()\n"}),
}
CANNOT_LOAD = ("lib_needs_pkg", "lib_says_why", "lib_bad_metric", "lib_class", "lib_exits")


@pytest.fixture
def code_library(tmp_path, monkeypatch):
    """A library folder whose tasks' code lacks a package, says why it lacks one, imports one
    only when scoring, names an unknown metric or needs a program, with its own index."""
    folder = tmp_path / "lm_tasks"
    folder.mkdir()
    for name, (extra, files) in TASKS.items():
        text = A_TASK.format(name=name) if "class:" not in extra else f"task: {name}\n"
        (folder / f"{name}.yaml").write_text(text + extra)
        for file, code in files.items():
            (folder / file).write_text(code)
    monkeypatch.setenv(library.INDEX_DIR_ENV, str(tmp_path / "index"))
    library._cached_rows.cache_clear()
    monkeypatch.setattr("evalfleet.tasks.manager.library_entries",
                        lambda: library.library_entries(folder))
    load_checks.recheck()
    yield folder
    library._cached_rows.cache_clear()
    load_checks.recheck()


def _naming_error(manager: TaskManager, name: str) -> str | None:
    try:
        manager.load([name])
    except TaskError as err:
        return str(err)
    return None


def test_listing_marks_what_cannot_load_with_the_reason_naming_gives(
        code_library, data_dir, tmp_path, monkeypatch):
    manager = TaskManager(data_dir=data_dir)
    listed = {e.name: e for e in manager.list() if e.name.startswith("lib_")}
    assert sorted(n for n, e in listed.items() if e.error) == sorted(
        [*CANNOT_LOAD, "lib_by_name"])
    # a module named by its import path: lm-eval's own module, which imports one gone from
    # current transformers (naming it imports transformers: slow)
    assert "!function 'lm_eval.tasks.xquad.utils.process_results_qa': cannot import module " \
        "(No module named 'transformers.data.metrics')" in listed["lib_by_name"].error
    for name in CANNOT_LOAD:
        assert listed[name].error == _naming_error(manager, name), name
    assert "No module named 'evalfleet_h4_absent_pkg'" in listed["lib_needs_pkg"].error
    assert "(evalfleet_h4_absent_two is required: pip install it)" in \
        listed["lib_says_why"].error
    assert "NeedsTool() failed: RuntimeError('install evalfleet-h4-absent-tool')" in \
        listed["lib_class"].error
    assert "no_such_metric_h4" in listed["lib_bad_metric"].error
    assert "module failed to load: SystemExit('Error: evalfleet-h4-absent-tool is not on " \
        "PATH')" in listed["lib_exits"].error  # named: a TaskError, the process goes on
    # a class task's dataset is the one its class names: the data column can tell
    assert (listed["lib_class"].dataset_path, listed["lib_class"].dataset_name) == (
        "allenai/ai2_arc", "ARC-Easy") and listed["lib_class"].in_mirror
    # A package imported only when scoring does not keep the task from loading.
    assert _naming_error(manager, "lib_scoring_only") is None
    assert manager.load(["lib_fine"]).tasks["lib_fine"].build_requests(limit=1)

    # Installing the package makes the task load, without rebuilding the index.
    site = tmp_path / "site"
    (site / "evalfleet_h4_absent_pkg").mkdir(parents=True)
    (site / "evalfleet_h4_absent_pkg" / "__init__.py").write_text("")
    (site / "evalfleet_h4_absent_pkg" / "sub.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(library, "build_rows", lambda folder: pytest.fail("index rebuilt"))
    library._cached_rows.cache_clear()  # a new process reading the cached index
    load_checks.recheck()
    manager = TaskManager(data_dir=data_dir)
    listed = {e.name: e for e in manager.list() if e.name.startswith("lib_")}
    assert listed["lib_needs_pkg"].error is None
    assert _naming_error(manager, "lib_needs_pkg") is None
    assert listed["lib_says_why"].error is not None


#: Library tasks that cannot load here, one per way of failing: a name gone from datasets,
#: a missing package named in the code's own words (by ``raise type(e)("...")``, by a
#: distribution's version, by a class's ``find_spec`` probe), a metric evalfleet does not
#: compute.
SAME_REASON = ["wiceu", "minerva_math_algebra", "putnam_axiom_original", "ag_news",
               "polemo2_in"]


def test_the_installed_library_marks_what_fails_when_named(data_dir):
    """lm-eval's own library: the listing marks 200+ tasks, and for each way of failing the
    mark is the error naming the task gives (the whole library against every task's load is
    scripts/lmeval_library_report.py's ``failures_marked_in_listing``: the acceptance test)."""
    manager = TaskManager(data_dir=data_dir)
    marked = {e.name: e.error for e in manager.list() if e.kind == "task" and e.error}
    assert len(marked) >= 200
    for name in SAME_REASON:
        assert name in marked, name
        assert _naming_error(manager, name) == marked[name], name
    # Naming these imports transformers or evaluate (seconds): the acceptance test names them.
    # A module exiting when a program is missing (swipl);
    assert "SystemExit('Error: SWI-Prolog (swipl) is not installed" in \
        marked["slr_bench_basic"]
    # 45 tasks import a module gone from current transformers;
    assert "(No module named 'transformers.data.metrics')" in marked["xquad_en"]
    # a module loading an HF evaluate metric the cache lacks: evaluate's own words name the
    # working directory, so the mark says what is missing in its own words.
    assert "module failed to load: RuntimeError(\"loads Hugging Face evaluate's metric " \
        "'bleu' when imported" in marked["meddialog_qsumm"]
    for name in ("arc_challenge_llama", "xnli_en", "mmlu_pro_law"):
        assert name not in marked and _naming_error(manager, name) is None, name


#: Load failures of lm-eval's library found only by loading: a ``!function`` metric without an
#: ``aggregation:`` (whether the function has a registered one is known once it is imported),
#: and Python classes that read their dataset when built (the data column says the mirror
#: lacks it; with the hub reachable they load).
FOUND_ONLY_BY_LOADING = {"darija_summarization_task", "fda", "squad_completion", "squadv2",
                         "swde"}


@pytest.mark.acceptance
@pytest.mark.skipif(not ACCEPTANCE, reason="acceptance tier: loads all 13,116 library tasks")
def test_every_library_load_failure_is_marked_in_the_listing(tmp_path, data_dir,
                                                             lmeval_task_dir):
    out = tmp_path / "report.jsonl"
    script = Path(__file__).resolve().parent.parent / "scripts" / "lmeval_library_report.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--data_dir", str(data_dir),
         "--overrides", str(lmeval_task_dir)],
        capture_output=True, text=True, timeout=1800, check=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["failed_to_load"] >= 200
    assert summary["marked_but_loaded"] == []
    assert set(summary["failures_not_marked"]) <= FOUND_ONLY_BY_LOADING
    assert summary["failures_marked_in_listing"] == \
        summary["failed_to_load"] - len(summary["failures_not_marked"])
