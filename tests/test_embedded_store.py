"""``evalfleet eval`` without ``--coordinator`` keeps its work in the default store.

The CLI runs in this process (``cli.main``), so the model libraries are imported once: the
embedded worker and coordinator are the real gRPC servers on loopback all the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evalfleet.client.cli import main


@pytest.fixture(autouse=True)
def _restore_logging():
    """``main`` points structlog and the root logger at this test's (captured) stderr; later
    tests must not log into that closed stream."""
    import logging

    import structlog

    config = structlog.get_config()
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.configure(**config)
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)


def _eval(tiny_model_dir: Path, data_dir: Path, output: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtype=float32",
            "--tasks", "arc_easy", "--limit", "3", "--batch_size", "4", "--bootstrap_iters", "0",
            "--no_progress", "--data_dir", str(data_dir), "--output_path", str(output),
            "--log_samples", *extra]


def _results_file(folder: Path) -> dict:
    [path] = list(folder.glob("*/results_*.json"))
    return json.loads(path.read_text())


def test_failed_write_keeps_results_and_a_repeat_computes_nothing(
        tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    """1. The result files cannot be written: the CLI says so, names the stored evaluation and
    the command that writes it; that command does. 2. The same command again computes nothing
    (every answer comes from the default store) and gives the same numbers."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EVALFLEET_CACHE_DIR", str(cache))
    blocker = tmp_path / "a-file"
    blocker.write_text("output_path goes below a file, so it cannot be created")

    assert main(_eval(tiny_model_dir, data_dir, blocker / "out")) == 2
    err = capsys.readouterr().err
    store = cache / "store.db"
    assert f"store {store}" in err  # the default store, announced
    assert "0 answers from the store, 12 to compute" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: could not write the results under --output_path")
    match = re.search(r"`evalfleet results (\w+) --store (\S+) --output_path DIR`", last)
    assert match and match.group(2) == str(store), last
    evaluation_id = match.group(1)

    first = tmp_path / "first"
    assert main(["results", evaluation_id, "--store", str(store), "--output_path",
                 str(first)]) == 0
    kept = _results_file(first)
    assert kept["config"]["evaluation_id"] == evaluation_id
    assert kept["config"]["positions_computed"] > 0
    [samples] = list(first.glob("*/samples_arc_easy_*.jsonl"))
    assert len(samples.read_text().splitlines()) == 3
    capsys.readouterr()

    second = tmp_path / "second"
    assert main(_eval(tiny_model_dir, data_dir, second)) == 0
    err = capsys.readouterr().err
    assert "12 answers from the store, 0 to compute" in err
    repeat = _results_file(second)
    assert repeat["config"]["positions_computed"] == 0  # no request reached the worker
    assert repeat["config"]["evaluation_id"] != evaluation_id
    assert repeat["results"] == kept["results"]


def test_memory_store_keeps_nothing_and_says_so(tiny_model_dir, data_dir, tmp_path,
                                                monkeypatch, capsys):
    monkeypatch.setenv("EVALFLEET_CACHE_DIR", str(tmp_path / "cache"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(_eval(tiny_model_dir, data_dir, blocker / "out", "--store", ":memory:")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the store was :memory:, so nothing was kept" in last
    assert not (tmp_path / "cache" / "store.db").exists()


@pytest.mark.parametrize("argv,needle", [
    (["results", "nope", "--store", "/nonexistent/store.db"], "no store at /nonexistent"),
    (["eval", "--tasks", "piqa", "--coordinator", "127.0.0.1:1", "--store", "x.db"],
     "--store: only for the embedded coordinator"),
    (["eval", "--tasks", "piqa", "--limit", "1", "--store", "mysql://u:pw@h/d"],
     "--store: 'mysql://u:***@h/d' is not a store"),
])
def test_store_flag_errors_are_one_line(argv, needle, data_dir, capsys):
    assert main([*argv, *(["--data_dir", str(data_dir)] if argv[0] == "eval" else [])]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:") and needle in last


def test_results_of_an_unknown_or_unfinished_evaluation(tmp_path, capsys):
    import asyncio
    import time

    from evalfleet.server.store import JobRecord, SqliteJobStore

    path = tmp_path / "s.db"

    async def seed() -> None:
        async with SqliteJobStore(path) as store:
            await store.create_job(JobRecord("running", b"", 2, "", time.time(), time.time()))

    asyncio.run(seed())
    assert main(["results", "nope", "--store", str(path)]) == 2
    assert "evaluation 'nope' not found in store" in capsys.readouterr().err
    assert main(["results", "running", "--store", str(path)]) == 2
    assert "evaluation 'running' has no results (running)" in capsys.readouterr().err
