"""For the ``results`` command tests: lm-eval 0.4.13 results files (and samples files) written
from a few numbers (the schema ``eval`` writes, without running a model), and the command run
as a user runs it or in the test's process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO_ROOT

MODEL = "models/tiny-smollm2"


def results_doc(tasks: dict[str, dict[str, tuple[float, float]]], *, limit: float | None = 30.0,
                num_fewshot: int | None = None, n: int = 30) -> dict[str, Any]:
    """A results document: ``tasks`` maps task -> ``"metric,filter" -> (value, stderr)``."""
    results = {}
    for task, metrics in tasks.items():
        entry: dict[str, Any] = {"alias": task}
        for key, (value, stderr) in metrics.items():
            metric, _, filter_name = key.partition(",")
            entry[key] = value
            entry[f"{metric}_stderr,{filter_name}"] = stderr
        results[task] = entry
    return {
        "results": results,
        "group_subtasks": {t: [] for t in tasks},
        "configs": {t: {"task": t, "output_type": "multiple_choice"} for t in tasks},
        "versions": {t: 1.0 for t in tasks},
        "n-shot": {t: 0 for t in tasks},
        "higher_is_better": {t: {k.partition(",")[0]: True for k in m} for t, m in tasks.items()},
        "n-samples": {t: {"original": 100, "effective": n} for t in tasks},
        "config": {"model": "hf", "model_args": {"pretrained": MODEL, "dtype": "float32"},
                   "batch_size": "8", "limit": limit, "num_fewshot": num_fewshot,
                   "bootstrap_iters": 0},
        "model_name": MODEL,
    }


def write_run(folder: Path, stamp: str, doc: dict[str, Any], *, stem: str = "results",
              samples: dict[str, list[dict[str, Any]]] | None = None) -> Path:
    """Write ``<stem>_<stamp>.json`` (stamp like ``2026-12-06T10-00-00.000001``) and its
    ``samples_<task>_<stamp>.jsonl`` files into ``folder``; returns the results file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_{stamp}.json"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    for task, records in (samples or {}).items():
        (folder / f"samples_{task}_{stamp}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def mc_record(doc_id: int, right: bool, filter_name: str = "none") -> dict[str, Any]:
    """A multiple-choice sample record (two choices, choice 0 the target)."""
    lls = ["-1.0", "-2.0"] if right else ["-2.0", "-1.0"]
    return {"doc_id": doc_id, "doc": {"question": f"question {doc_id}"}, "target": "0",
            "arguments": {"gen_args_0": {"arg_0": f"Question {doc_id}?", "arg_1": " yes"},
                          "gen_args_1": {"arg_0": f"Question {doc_id}?", "arg_1": " no"}},
            "resps": [[[ll, "False"]] for ll in lls], "filtered_resps": [[ll, "False"]
                                                                        for ll in lls],
            "filter": filter_name, "metrics": ["acc"], "doc_hash": f"h{doc_id}",
            "prompt_hash": "p", "target_hash": "t", "acc": 1.0 if right else 0.0}


def results_cli(*args: str) -> subprocess.CompletedProcess:
    """``evalfleet results ARGS`` as a user runs it (its own process, output piped)."""
    return subprocess.run([sys.executable, "-m", "evalfleet.client.cli", "results", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env=os.environ.copy())


def results_here(capsys, *args: str) -> tuple[int, str, str]:
    """``evalfleet results ARGS`` in this process: (exit code, stdout, stderr)."""
    from evalfleet.client.cli import build_parser
    from evalfleet.client.results_command import run_results

    code = run_results(build_parser().parse_args(["results", *args]))
    out = capsys.readouterr()
    return code, out.out, out.err
