"""bench/gpu_bench.py runs end to end on CPU with tiny shapes (the path the GPU run takes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ACCEPTANCE, REPO_ROOT

# lm-eval and evalfleet three times each over three jobs: about 10 minutes on 2 cores, too much
# for the default suite; `make test-acceptance` runs it.
pytestmark = [pytest.mark.reference,
              pytest.mark.skipif(not ACCEPTANCE, reason="acceptance tier (make test-acceptance)")]


def test_gpu_bench_tiny_on_cpu(tiny_model_dir, data_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "gpu_bench.py"), "--device", "cpu", "--tiny",
         "--data_dir", str(data_dir), "--tokenizer", str(tiny_model_dir),
         "--work_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload["bench"] == "gpu" and payload["shape"] == "tiny"
    assert payload["dtype"] == "bfloat16" and payload["batch_size"] == 8
    for job in ("mmlu", "arc_challenge", "arc_easy"):
        entry = payload[job]
        assert entry["lmeval_positions"] > entry["evalfleet_positions"] > 0
        assert entry["evalfleet_positions_per_s"] > 0 and entry["lmeval_positions_per_s"] > 0
        sharing = entry["sharing_vs_lmeval"]
        assert sharing["docs"] > 0 and isinstance(sharing["changed"], int)
        assert 0 <= sharing["changed"] <= sharing["docs"]
        # without sharing, bfloat16 loglikelihoods equal lm-eval's at the same batch size
        assert entry["plain_vs_lmeval"] == {"docs": entry["sharing_vs_lmeval"]["docs"],
                                            "changed": 0, "max_abs_ll_diff": 0.0}
        # positions differ from lm-eval's: the coordinator's scheduler cuts a job into batches
        # (16 requests first, then by time) and each is padded on its own
        assert entry["plain_positions"] > 0
    # README's bf16 policy: prefix sharing changes no more per-sample metrics than lm-eval
    # itself changes between two batch sizes on the same job (measured on arc_easy: 2 vs 8)
    churn = payload["arc_easy"]["lmeval_bs2_vs_bs8"]
    sharing = payload["arc_easy"]["sharing_vs_lmeval"]
    assert churn["docs"] == sharing["docs"] and isinstance(churn["changed"], int)
    assert sharing["changed"] <= churn["changed"], (sharing, churn)
