"""``examples/github-actions.yml`` run as far as it can run here: its ``run:`` steps (not GitHub's
own actions, nor the pip install) with bash, on the tiny model, against two stored baselines:
the tiny model's own run (the gate passes) and SmolLM2-135M's (a real regression: it fails)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DATA_DIR, REPO_ROOT

WORKFLOW = REPO_ROOT / "examples" / "github-actions.yml"


def _steps() -> tuple[dict[str, str], dict[str, str]]:
    """(job env, step name -> run script) of the workflow's only job."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    [job] = workflow["jobs"].values()
    return ({k: str(v) for k, v in job["env"].items()},
            {s["name"]: s["run"] for s in job["steps"] if "run" in s})


def _run_step(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    # GitHub runs `run:` steps with `bash -e {0}` plus pipefail on ubuntu runners.
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


def _baseline(results_file: Path, folder: Path) -> Path:
    """A stored baseline: a run's results file and samples files copied into one folder."""
    folder.mkdir(parents=True)
    stamp = results_file.stem.removeprefix("results_")
    for path in results_file.parent.iterdir():
        if stamp in path.name:
            shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def workspace(two_model_runs, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ci")
    job_env, steps = _steps()
    assert list(steps) == ["Install evalfleet", "Evaluate", "Compare with the baseline",
                           "Release gate (GO / NO-GO / INCONCLUSIVE)", "Report and chart"]
    env = {**os.environ, **job_env, "MODEL": str(tiny_model_dir), "LIMIT": "40",
           "GATE_POLICY": str(REPO_ROOT / job_env["GATE_POLICY"]),
           "EVALFLEET_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    assert job_env["TASKS"] == "arc_easy"
    evaluate = _run_step(steps["Evaluate"], env, root)
    assert evaluate.returncode == 0, evaluate.stderr
    return root, env, steps


def test_ci_example_passes_against_its_own_baseline(workspace, two_model_runs):
    root, env, steps = workspace
    env = {**env, "BASELINE": str(_baseline(two_model_runs["tiny"], root / "base-tiny"))}
    compare = _run_step(steps["Compare with the baseline"], env, root)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "no significant regression" in compare.stderr
    rows = json.loads((root / "results" / "compare.json").read_text())["rows"]
    assert {r["metric"] for r in rows} == {"acc", "acc_norm"}
    assert all(r["diff"] == 0 and r["method"] == "McNemar exact" for r in rows)
    assert "McNemar exact" in (root / "results" / "compare.md").read_text()
    # the tiny random model is no worse than itself, but below the policy's floor: NO-GO
    gate = _run_step(steps["Release gate (GO / NO-GO / INCONCLUSIVE)"], env, root)
    assert gate.returncode == 1, gate.stdout + gate.stderr
    verdict = json.loads((root / "results" / "gate.json").read_text())
    assert verdict["verdict"] == "NO-GO", verdict["reasons"]
    assert [r for r in verdict["reasons"] if "worse than the floor" in r] == verdict["reasons"]
    assert "NO-GO" in (root / "results" / "gate.md").read_text()
    report = _run_step(steps["Report and chart"], env, root)
    assert report.returncode == 0, report.stderr
    assert (root / "results" / "report.html").stat().st_size > 10_000
    assert (root / "results" / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((root / "results").glob("candidate_*.json"))) == 1
    assert len(list((root / "results").glob("samples_arc_easy_*.jsonl"))) == 1


def test_ci_example_fails_on_a_regression_against_a_better_baseline(workspace, two_model_runs):
    root, env, steps = workspace
    env = {**env, "BASELINE": str(_baseline(two_model_runs["real"], root / "base-real"))}
    compare = _run_step(steps["Compare with the baseline"], env, root)
    assert compare.returncode == 1, compare.stdout + compare.stderr
    assert "REGRESSION arc_easy acc,none" in compare.stderr
    gate = _run_step(steps["Release gate (GO / NO-GO / INCONCLUSIVE)"], env, root)
    assert gate.returncode == 1, gate.stdout + gate.stderr
    verdict = json.loads((root / "results" / "gate.json").read_text())
    assert verdict["verdict"] == "NO-GO"
    assert any("by more than max_regression" in r for r in verdict["reasons"])
    report = _run_step(steps["Report and chart"], env, root)  # `if: always()` steps still run
    assert report.returncode == 0, report.stderr
