"""Flags a newcomer mistypes are answered by the subcommand they were given to, with the flag
they meant; ``evalfleet --version`` prints the installed version."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import REPO_ROOT

EVALFLEET = str(Path(sys.executable).parent / "evalfleet")
ENV = {**os.environ, "COLUMNS": "80"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EVALFLEET, *args], capture_output=True, text=True, env=ENV,
                          timeout=60, cwd=REPO_ROOT)


@pytest.mark.parametrize(("typed", "meant"), [("--limt", "--limit"),
                                              ("--num-fewshot", "--num_fewshot"),
                                              ("--batch-size", "--batch_size")])
def test_a_mistyped_eval_flag_gets_did_you_mean_and_the_eval_usage(typed, meant):
    result = _run("eval", "--tasks", "arc_easy", typed, "5")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: evalfleet eval "), result.stderr[:200]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"evalfleet eval: error: unrecognized arguments: {typed} 5; "
                    f"did you mean {meant}?")
    assert "Traceback" not in result.stderr


def test_a_mistyped_flag_of_a_nested_command_gets_that_commands_usage():
    result = _run("serve", "worker", "--prot", "5")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: evalfleet serve worker ")
    assert result.stderr.strip().endswith("did you mean --port?")


def test_version_prints_the_installed_package_version():
    result = _run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"evalfleet {version('evalfleet')}\n"
    assert version("evalfleet") == "0.1.0"
