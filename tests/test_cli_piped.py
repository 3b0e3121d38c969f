"""What the CLI prints when piped into a log or ``grep`` at 80 columns, for real: the results
header of a --coordinator run with the model args used, ``workers`` and ``tasks list`` as
complete tab-separated lines (an embedded run's piped progress and logs: tests/test_cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import DATA_DIR, REPO_ROOT

EVALFLEET = str(Path(sys.executable).parent / "evalfleet")
ENV = {**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "COLUMNS": "80"}


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([EVALFLEET, *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=REPO_ROOT)


def test_coordinator_run_header_shows_the_workers_model_args(coordinator, tiny_model_dir):
    result = _run("eval", "--coordinator", coordinator.address, "--model", "hf", "--tasks",
                  "arc_easy", "--limit", "2", "--bootstrap_iters", "0", "--no_progress")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert header.startswith("hf ({") and "}), gen_kwargs: ({})" in header
    assert f"'pretrained': '{tiny_model_dir}'" in header and "'dtype': 'float32'" in header
    assert header.endswith("limit: 2.0, num_fewshot: None, batch_size: 1")


def test_piped_workers_is_complete_tab_separated_lines(coordinator, tiny_worker):
    result = _run("workers", "--coordinator", coordinator.address, timeout=60)
    assert result.returncode == 0, result.stderr
    header, *rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert header == ["address", "source", "state", "backend", "model", "fingerprint",
                      "in flight", "req/s", "answered", "failed", "last error"]
    [row] = rows
    assert row[:5] == [tiny_worker.address, "static", "READY", "hf",
                       str(Path(row[4]))]  # the model path whole
    assert row[4].endswith("tiny-smollm2") and row[5].startswith("sha256:")


def test_piped_tasks_list_is_complete_tab_separated_lines_and_json():
    result = _run("tasks", "list", timeout=60)
    assert result.returncode == 0, result.stderr
    rows = {cols[0]: cols[1:] for cols in
            (line.split("\t") for line in result.stdout.splitlines())}
    assert rows["name"] == ["kind", "dataset", "data", "output_type"]
    assert rows["arc_easy"] == ["task", "allenai/ai2_arc/ARC-Easy", "yes", "multiple_choice"]
    assert rows["mmlu_high_school_european_history"][0] == "task"  # 33 characters, whole
    assert rows["kobest"] == ["group", "", "", ""]
    as_json = _run("tasks", "list", "--json", timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    objects = {o["name"]: o for o in map(json.loads, as_json.stdout.splitlines())}
    assert objects.keys() == rows.keys() - {"name"}
    assert objects["arc_easy"]["in_mirror"] is True
    assert objects["kobest"]["members"]
