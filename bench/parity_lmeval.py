"""Run lm-eval 0.4.13 and evalfleet on the same model, data and settings; compare their files.

Both write results and samples files; this script compares every metric and every per-sample
loglikelihood, and prints the wall time of each. Example (the foundation's acceptance check):

    .venv/bin/python bench/parity_lmeval.py --model_dir models/smollm2-135m \
        --tasks arc_easy,piqa --limit 100 --batch_size 8

The last line is JSON: {"bench": "parity", "metrics_identical": ..., "max_abs_ll_diff": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def _run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def _load(folder: Path) -> tuple[dict, dict[str, dict[int, dict]]]:
    [results_file] = list(folder.rglob("results_*.json"))
    samples: dict[str, dict[int, dict]] = {}
    for path in folder.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = {json.loads(line)["doc_id"]: json.loads(line)
                         for line in path.read_text().splitlines()}
    return json.loads(results_file.read_text()), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", default=str(REPO / "models" / "smollm2-135m"))
    parser.add_argument("--tasks", default="arc_easy,piqa")
    parser.add_argument("--limit", default="100")
    parser.add_argument("--num_fewshot", default="0")
    parser.add_argument("--batch_size", default="8")
    parser.add_argument("--data_dir", default=str(SHARED / "data"))
    args = parser.parse_args()

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "EVALFLEET_DATA_DIR": args.data_dir}
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        subprocess.run([sys.executable, str(SHARED / "tools" / "lmeval_local.py"),
                        args.data_dir, str(tmp_path / "lm_tasks")], check=True,
                       capture_output=True)
        common = ["--tasks", args.tasks, "--limit", args.limit, "--num_fewshot",
                  args.num_fewshot, "--batch_size", args.batch_size, "--log_samples"]
        lm_wall = _run([str(bin_dir / "lm_eval"), "--model", "hf", "--model_args",
                        f"pretrained={args.model_dir},dtype=float32", "--device", "cpu",
                        "--include_path", str(tmp_path / "lm_tasks"), "--output_path",
                        str(tmp_path / "lm"), *common], env)
        ef_wall = _run([str(bin_dir / "evalfleet"), "eval", "--model", "hf", "--model_args",
                        f"pretrained={args.model_dir},dtype=float32", "--device", "cpu",
                        "--output_path", str(tmp_path / "ef"), "--no_progress", *common], env)
        lm_results, lm_samples = _load(tmp_path / "lm")
        ef_results, ef_samples = _load(tmp_path / "ef")

    identical = True
    worst = 0.0
    print(f"{'task':12s} {'metric':16s} {'lm-eval':>10s} {'evalfleet':>10s}")
    for task in args.tasks.split(","):
        for key, value in lm_results["results"][task].items():
            if "," not in key:
                continue
            ours = ef_results["results"][task].get(key)
            same = ours == value if isinstance(value, str) else (
                ours is not None and abs(ours - value) <= 1e-12)
            identical &= bool(same)
            print(f"{task:12s} {key:16s} {value!s:>10.8} {ours!s:>10.8} {'' if same else 'DIFF'}")
        for doc_id, ref in lm_samples[task].items():
            mine = ef_samples[task][doc_id]
            for a, b in zip(ref["resps"], mine["resps"], strict=True):
                worst = max(worst, abs(float(a[0][0]) - float(b[0][0])))
    print(f"lm-eval {lm_wall:.1f}s, evalfleet {ef_wall:.1f}s, ratio {ef_wall / lm_wall:.3f}")
    print(json.dumps({"bench": "parity", "tasks": args.tasks, "limit": args.limit,
                      "metrics_identical": identical, "max_abs_ll_diff": worst,
                      "lm_eval_wall_s": round(lm_wall, 1), "evalfleet_wall_s": round(ef_wall, 1),
                      "wall_ratio": round(ef_wall / lm_wall, 3)}))


if __name__ == "__main__":
    main()
