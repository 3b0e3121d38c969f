"""A new user's data mistakes are answered in a second or two, in one line, before anything
slow starts: no data folder and no hub, a split the mirror lacks (hellaswag's validation), and
the tasks listing that says which tasks have their data."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, free_port

from evalfleet.tasks import TaskManager
from evalfleet.tasks.dataset import hub_unreachable, splits_read

EVALFLEET = str(Path(sys.executable).parent / "evalfleet")
#: A model path that does not exist: a command that tried to load it would fail on the model,
#: so a data error proves the data was checked before any model load.
NO_MODEL = "pretrained=/nonexistent/model"


def _env(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("EVALFLEET_DATA_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    for key, value in changes.items():
        if value is not None:
            env[key] = value
    return env


def _eval(*argv: str, env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess,
                                                                 float]:
    started = time.monotonic()
    done = subprocess.run([EVALFLEET, "eval", "--model", "hf", "--model_args", NO_MODEL, *argv],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - started


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE=1", "connection refused"])
def test_no_data_folder_and_no_hub_fails_in_seconds_naming_both_ways(tmp_path, offline):
    """Before: datasets retried the hub for ~49 s, printed ~47 lines of warnings, then failed
    without naming --data_dir or EVALFLEET_DATA_DIR."""
    if offline == "HF_HUB_OFFLINE=1":
        env = _env(HF_HUB_OFFLINE="1")
    else:  # no network: the hub's first connection is refused
        env = _env(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    done, elapsed = _eval("--tasks", "arc_easy", "--limit", "5", env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert elapsed < 10, elapsed
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("error: task 'arc_easy' (")
    assert "arc_easy.yaml) reads dataset allenai/ai2_arc/ARC-Easy" in line
    assert "no data folder is set" in line
    assert "--data_dir" in line and "EVALFLEET_DATA_DIR" in line
    assert ("HF_HUB_OFFLINE is set" if offline == "HF_HUB_OFFLINE=1"
            else "cannot be reached") in line


def test_a_data_folder_without_the_dataset_is_named(tmp_path, data_dir):
    """The folder looked in is named, so a mistyped --data_dir is seen at once."""
    done, elapsed = _eval("--tasks", "arc_easy", "--limit", "5", "--data_dir", str(tmp_path),
                          env=_env(HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert done.returncode == 2 and elapsed < 10, done.stderr
    assert f"not in the data folder {tmp_path}" in done.stderr
    assert str(tmp_path / "allenai" / "ai2_arc" / "ARC-Easy") in done.stderr


def test_a_missing_split_fails_before_the_model_loads_and_before_any_tracker_run(
        tmp_path, data_dir):
    """Before: hellaswag (the mirror has only its train split) failed after the model had
    loaded, and a W&B run was created first. Now rc 2 naming the split, with a model path that
    does not exist (never reached) and no W&B run written."""
    env = _env(EVALFLEET_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", WANDB_MODE="offline",
               WANDB_DIR=str(tmp_path))
    done, elapsed = _eval("--tasks", "hellaswag", "--limit", "5",
                          "--wandb_args", "project=evalfleet-test", env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert elapsed < 10
    assert "split 'validation' of task 'hellaswag' not found" in done.stderr
    assert "Rowan/hellaswag/default/validation.jsonl" in done.stderr
    assert "that folder holds: train" in done.stderr
    assert "nonexistent" not in done.stderr and "embedded coordinator" not in done.stderr
    assert not (tmp_path / "wandb").exists()


def test_a_coordinators_job_refused_at_planning_starts_no_tracker_run(
        coordinator, tmp_path, data_dir):
    """With --coordinator, the trackers start once the coordinator accepted (planned) the
    job: a job refused for its data leaves no W&B run behind."""
    env = _env(WANDB_MODE="offline", WANDB_DIR=str(tmp_path), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [EVALFLEET, "eval", "--coordinator", coordinator.address, "--model", "hf", "--tasks",
         "hellaswag", "--limit", "2", "--wandb_args", "project=evalfleet-test"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "split 'validation' of task 'hellaswag' not found" in done.stderr
    assert not (tmp_path / "wandb").exists()


def test_the_listing_checks_the_splits_a_task_reads(data_dir):
    """Before: hellaswag's data was listed as available (the folder exists, without the
    validation split the task reads)."""
    entries = {e.name: e for e in TaskManager(data_dir=data_dir).list() if e.kind == "task"}
    assert entries["hellaswag"].in_mirror is False
    assert entries["hellaswag"].missing_splits == ["validation"]
    assert entries["arc_easy"].in_mirror is True and entries["arc_easy"].missing_splits == []
    done = subprocess.run([EVALFLEET, "tasks", "list", "--data_dir", str(data_dir)],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    rows = [line.replace("│", " ").split() for line in done.stdout.splitlines()]
    assert "yes" in next(r for r in rows if r[:1] == ["arc_easy"])
    assert "yes" not in next(r for r in rows if r[:1] == ["hellaswag"])


def test_splits_read_follows_lm_evals_fewshot_order():
    cfg = {"test_split": "test", "validation_split": "validation", "training_split": "train"}
    assert splits_read(cfg, 0) == [("test_split", "test")]
    assert splits_read(cfg, 5) == [("test_split", "test"), ("training_split", "train")]
    assert splits_read({**cfg, "fewshot_split": "dev"}, 5) == [
        ("test_split", "test"), ("fewshot_split", "dev")]
    assert splits_read({"validation_split": "validation"}, 3) == [
        ("validation_split", "validation")]
    inline = {"test_split": "test", "training_split": "train",
              "fewshot_config": {"samples": [{"q": 1}]}}
    assert splits_read(inline, 2) == [("test_split", "test")]


def test_hub_reachability_is_asked_once_a_minute(monkeypatch):
    import evalfleet.tasks.dataset as dataset

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(dataset, "_hub_checked", None)
    calls = []
    real = dataset.socket.create_connection
    monkeypatch.setattr(dataset.socket, "create_connection",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    first = hub_unreachable()
    assert first is not None and "cannot be reached" in first
    assert hub_unreachable() == first and len(calls) == 1
