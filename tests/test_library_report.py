"""scripts/lmeval_library_report.py on a small subset of lm-eval's task folder (the whole
library is a script run, with its totals in the README)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.reference
def test_library_report_on_kobest_and_a_broken_task(tmp_path, data_dir, lmeval_task_dir):
    import lm_eval

    tasks = tmp_path / "tasks"
    shutil.copytree(Path(lm_eval.__file__).parent / "tasks" / "kobest", tasks / "kobest")
    (tasks / "broken.yaml").write_text(
        "task: broken_rouge\ndataset_path: skt/kobest_v1\ndataset_name: copa\n"
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{premise}}'\n"
        "doc_to_target: '{{alternative_1}}'\nmetric_list:\n  - metric: rouge2\n")
    out = tmp_path / "report.jsonl"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "lmeval_library_report.py"), "--tasks_dir",
         str(tasks), "--out", str(out), "--data_dir", str(data_dir), "--docs", "2",
         "--overrides", str(lmeval_task_dir)],
        capture_output=True, text=True, timeout=1200, check=True,
        env={**os.environ, "EVALFLEET_TASK_INDEX_DIR": str(tmp_path / "index")})
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["tasks"] == 6 and summary["loaded"] == 5
    assert summary["loaded_with_data_in_mirror"] == 5 and summary["same_requests"] == 5
    # tasks list marks the one that fails, with the error loading it gives, and no other
    assert summary["failures_marked_with_the_same_reason"] == 1
    assert summary["failures_not_marked"] == [] and summary["marked_but_loaded"] == []
    rows = {r["task"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert "unknown metric 'rouge2'" in rows["broken_rouge"]["error"]
    assert "broken_rouge: TaskError" in proc.stdout
