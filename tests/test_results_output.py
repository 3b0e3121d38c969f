"""The ``results`` commands' output at 80 columns and piped: names that identify a row are never
cut, written paths are not broken mid-name, piped output is plain and complete. The CLI runs in
its own process, on a pseudo-terminal of 80 columns or into a pipe."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO_ROOT
from results_files import results_doc, write_run

T1 = "2026-12-06T10-00-00.000001"
LONG_TASKS = ["mmlu_high_school_government_and_politics", "mmlu_professional_accounting",
              "arc_easy"]


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "evalfleet.client.cli", "results", *args]


def _on_terminal(*args: str, columns: int = 80) -> tuple[int, str, str]:
    """Run ``evalfleet results ARGS`` with stdout on a pseudo-terminal of ``columns``."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "40"}
    proc = subprocess.Popen(_argv(*args), stdout=slave, stderr=subprocess.PIPE, cwd=REPO_ROOT,
                            env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    return proc.returncode, b"".join(chunks).decode().replace("\r\n", "\n"), err


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    metrics = {"acc,none": (0.41, 0.03), "acc_norm,none": (0.43, 0.03)}
    deep = tmp_path.joinpath("baselines", "nightly-runs-of-the-candidate-models", "2026-12",
                             "models__tiny-smollm2")
    a = write_run(deep, T1, results_doc(dict.fromkeys(LONG_TASKS, metrics)))
    b = write_run(tmp_path / "b", T1, results_doc(dict.fromkeys(LONG_TASKS[:2], metrics)))
    return a, b


def test_compare_fits_80_columns_on_a_terminal_and_is_complete_piped(tmp_path):
    a, b = _runs(tmp_path)
    code, out, err = _on_terminal("compare", str(a), str(b))
    assert code == 0, err
    lines = out.splitlines()
    too_wide = [line for line in lines
                if len(line) > 80 and line.strip() not in (f"({a})", f"({b})")]
    assert not too_wide, too_wide  # only a path longer than the terminal itself may be wider
    assert any(line.strip() == f"({a})" for line in lines)  # the path on a line of its own
    for task in LONG_TASKS[:2]:  # each task's name whole, on the line of each of its metrics
        named = [line for line in lines if task in line]
        assert sorted(re.search(r"[ |](acc|acc_norm)[ ,|]", line).group(1) for line in named) \
            == ["acc", "acc_norm"], out
    assert f"task {LONG_TASKS[2]}: only in A" in out
    assert "\x1b[" not in out
    # piped, the same command prints the whole plain table, whatever COLUMNS says
    piped = subprocess.run(_argv("compare", str(a), str(b)), capture_output=True, text=True,
                           cwd=REPO_ROOT, env={**os.environ, "COLUMNS": "80"}, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert "\x1b[" not in piped.stdout + piped.stderr
    lines = piped.stdout.splitlines()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines
            if line.startswith("|")]
    assert rows[0][:4] + rows[0][6:] \
        == ["Task", "Metric", "Filter", "", "B-A", "SE(B-A)", "p", "test", "n"]
    assert rows[0][4].startswith("A: models/tiny-smollm2") and rows[0][5].startswith("B: ")
    assert [r[:2] for r in rows[2:]] == [[t, m] for t in LONG_TASKS[:2]
                                         for m in ("acc", "acc_norm")]
    [named] = [line for line in lines if line.startswith("A: ")]
    assert named.endswith(f"({a})") and len(named) > 80  # one line, however long


def _stored_evaluation(store: Path) -> str:
    """A SUCCEEDED evaluation in a store, as `eval` leaves one."""
    from evalfleet.server.store import JobRecord, SqliteJobStore
    from evalfleet.v1 import coordinator_pb2 as cpb

    doc = results_doc({"arc_easy": {"acc,none": (0.4, 0.05)}})
    results = cpb.EvaluationResults(id="ev1", results_json=json.dumps(doc), table="|table|")

    async def seed() -> None:
        async with SqliteJobStore(store) as jobs:
            await jobs.create_job(JobRecord(
                "ev1", b"", cpb.EVALUATION_STATE_SUCCEEDED, "", time.time(), time.time(),
                results_json=results.results_json, results=results.SerializeToString()))

    asyncio.run(seed())
    return "ev1"


def test_written_paths_are_whole_lines_when_piped(tmp_path):
    evaluation = _stored_evaluation(tmp_path / "s.db")
    out = tmp_path / ("an-output-folder-whose-name-is-longer-than-a-terminal-is-wide" * 2)
    piped = subprocess.run(_argv(evaluation, "--store", str(tmp_path / "s.db"),
                                 "--output_path", str(out)),
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                           env={**os.environ, "COLUMNS": "80"})
    assert piped.returncode == 0, piped.stderr
    [written] = list(out.glob("*/results_*.json"))
    assert f"wrote {written}\n" in piped.stderr, piped.stderr
