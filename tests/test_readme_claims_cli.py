"""README claims about ``evalfleet eval``'s flags that had no test: ``--show_config`` "prints
the whole results JSON", and ``--batch_size`` takes ``auto:N`` (``auto`` reports its choice
once). One embedded run of the tiny model, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import DATA_DIR, REPO_ROOT

ENV = {**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1"}


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalfleet.client.cli", "eval", *args],
                          capture_output=True, text=True, env=ENV, timeout=600, cwd=REPO_ROOT)


def test_show_config_prints_the_results_file_and_batch_size_auto_n_runs(tiny_model_dir,
                                                                          tmp_path):
    done = _eval("--model", "hf", "--model_args", f"pretrained={tiny_model_dir}",
                 "--batch_size", "auto:4", "--tasks", "arc_easy", "--limit", "2",
                 "--show_config", "--output_path", str(tmp_path), "--store", ":memory:",
                 "--no_progress")
    assert done.returncode == 0, done.stderr[-3000:]
    shown, end = json.JSONDecoder().raw_decode(done.stdout)
    assert "|arc_easy" in done.stdout[end:]  # the table follows it
    [results_file] = list(tmp_path.glob("*/results_*.json"))
    assert shown == json.loads(results_file.read_text())  # the whole results JSON
    assert shown["config"]["batch_size"] == "auto:4"
    assert shown["results"]["arc_easy"]["sample_len"] == 2
    notes = [line for line in done.stderr.splitlines() if "batch size auto" in line]
    assert len(notes) == 1 and notes[0].startswith("note: batch size auto: chose ")


def test_batch_size_auto_with_a_bad_schedule_is_one_line(tiny_model_dir):
    done = _eval("--model", "hf", "--model_args", f"pretrained={tiny_model_dir}",
                 "--batch_size", "auto:often", "--tasks", "arc_easy", "--limit", "1",
                 "--store", ":memory:", "--no_progress")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "batch_size" in lines[-1]
    assert "'auto:often'" in lines[-1] and "Traceback" not in done.stderr
