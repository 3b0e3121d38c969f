"""GPU speed and agreement: lm-eval 0.4.13 and evalfleet side by side on random-initialised models.

One command, no network. It builds a randomly initialised Llama of a given shape (SmolLM2's
shapes; the SmolLM2 tokenizer from a local directory) in the given dtype, saves it once under
``--work_dir``, and for each job runs, each as a fresh process the way a user runs it:

1. lm-eval (``--model hf``, ``--batch_size B``), its forwards' positions counted and timed;
2. evalfleet's CLI (embedded coordinator and worker) with prefix sharing (the default);
3. evalfleet with ``prefix_sharing=false`` (lm-eval's own batching: results must equal lm-eval's);
4. for ``--churn_jobs``: lm-eval again at ``--churn_batch_size`` (8), to measure how many per-sample
   metrics lm-eval itself changes between batch sizes (the yardstick for sharing's changes).

Jobs: mmlu 5-shot (4 subjects x 100), arc_challenge 25-shot (200), arc_easy 0-shot (1000), from a
local data mirror (lm-eval reads it through ``lmeval_local.py`` override YAMLs). It prints, per
job, the walls and their ratios, positions and positions per second (lm-eval: its
``_loglikelihood_tokens`` time; evalfleet: the worker's busy span, from its ``batch_done``
log lines: tokenizing, planning, forwards and reduction), and the
per-sample agreement (0/1 metrics that changed, max |delta loglikelihood|); one JSON line last.

    python bench/gpu_bench.py                       # one GPU: SmolLM2-1.7B shape, bf16, batch 32
    python bench/gpu_bench.py --device cpu --tiny   # the same path on CPU, tiny shapes (< 3 min)

On a machine without this repository's ``../shared``: ``--data_dir`` (the mirror, at least
``allenai/ai2_arc`` and the four ``cais/mmlu`` subjects), ``--lmeval_tool`` (lmeval_local.py) and
``--tokenizer`` (a directory with SmolLM2's tokenizer.json and tokenizer_config.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
METRICS = ("acc", "acc_norm")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")

# SmolLM2's shapes (vocabulary and special tokens come from the tokenizer)
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32,
                         max_position_embeddings=8192, rope_theta=130000.0),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                 rope_theta=10000.0),
}
MMLU_SUBJECTS = ("mmlu_abstract_algebra", "mmlu_anatomy", "mmlu_astronomy",
                 "mmlu_business_ethics")


@dataclass(frozen=True)
class Job:
    name: str
    tasks: tuple[str, ...]
    num_fewshot: int
    limit: int


JOBS = {
    "mmlu": Job("mmlu", MMLU_SUBJECTS, 5, 100),
    "arc_challenge": Job("arc_challenge", ("arc_challenge",), 25, 200),
    "arc_easy": Job("arc_easy", ("arc_easy",), 0, 1000),
}
TINY_LIMITS = {"mmlu": 2, "arc_challenge": 2, "arc_easy": 12}


@dataclass
class Run:
    """One process: its wall time, positions, compute seconds and per-sample records."""

    wall_s: float
    positions: int
    compute_s: float
    samples: dict[str, dict[int, dict]] = field(default_factory=dict)

    @property
    def positions_per_s(self) -> float | None:
        return round(self.positions / self.compute_s) if self.compute_s > 0 else None


# ---------------------------------------------------------------- paths and the model


def _first_existing(*paths: Path) -> Path:
    return next((p for p in paths if p.exists()), paths[0])


def build_model(shape: str, dtype: str, device: str, tokenizer_dir: Path, out: Path,
                seed: int) -> Path:
    """A randomly initialised Llama of ``shape`` saved in ``out`` (reused when already there)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = out / f"{shape}-{dtype}-seed{seed}"
    marker = target / "evalfleet_gpu_bench.json"
    if marker.exists():
        return target
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, initializer_range=0.02, **SHAPES[shape])
    torch.manual_seed(seed)
    init_device = device if device.startswith("cuda") else "cpu"
    with torch.device(init_device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, target / name)
    marker.write_text(json.dumps({"shape": shape, "dtype": dtype, "seed": seed,
                                  "parameters": sum(p.numel() for p in model.parameters())}))
    del model
    return target


# ---------------------------------------------------------------- lm-eval (child process)


def _lmeval_child(args: argparse.Namespace) -> None:
    """Run lm-eval on one job in this (fresh) process and write what the parent needs."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    probe = {"positions": 0, "compute_s": 0.0}
    model_call, ll_tokens = HFLM._model_call, HFLM._loglikelihood_tokens

    def counted_call(self, inps, *a, **kw):
        probe["positions"] += int(inps.shape[0]) * int(inps.shape[1])
        return model_call(self, inps, *a, **kw)

    def timed(self, *a, **kw):
        started = time.perf_counter()
        try:
            return ll_tokens(self, *a, **kw)
        finally:
            probe["compute_s"] += time.perf_counter() - started

    HFLM._model_call, HFLM._loglikelihood_tokens = counted_call, timed
    job = _job(args.child_job, args.tiny)
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={args.child_model},dtype={args.dtype}",
        tasks=list(job.tasks), num_fewshot=job.num_fewshot, limit=job.limit,
        batch_size=args.child_batch_size, device=args.device,
        task_manager=TaskManager(include_path=args.child_include_path), log_samples=True)
    Path(args.lmeval_child).write_text(json.dumps(
        {**probe, "samples": out["samples"]}, default=str))


def run_lmeval(job: Job, model_dir: Path, include_path: Path, batch_size: int,
               args: argparse.Namespace, out_file: Path) -> Run:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--lmeval_child", str(out_file),
           "--child_job", job.name, "--child_model", str(model_dir),
           "--child_include_path", str(include_path), "--child_batch_size", str(batch_size),
           "--device", args.device, "--dtype", args.dtype, *(["--tiny"] if args.tiny else [])]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(args))
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"lm-eval failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    doc = json.loads(out_file.read_text())
    samples = {task: {int(r["doc_id"]): r for r in rows} for task, rows in doc["samples"].items()}
    return Run(wall, int(doc["positions"]), float(doc["compute_s"]), samples)


# ---------------------------------------------------------------- evalfleet (CLI process)

# structlog's console line: "<iso timestamp> [info     ] batch_done     key=value ..."
_BATCH_DONE = re.compile(r"^(\S+)\s+\[\w+\s*\]\s+batch_done\b(.*)$")


def worker_busy_seconds(stderr: str) -> float:
    """The worker's busy span: from its first batch's start to its last batch's end (each
    ``batch_done`` line carries its end time and its ``seconds``)."""
    spans = []
    for line in stderr.splitlines():
        if m := _BATCH_DONE.search(line.strip()):
            end = datetime.fromisoformat(m.group(1)).timestamp()
            fields = dict(re.findall(r"(\w+)=(\S+)", m.group(2)))
            spans.append((end - float(fields.get("seconds", 0.0)), end))
    return max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0.0


def run_evalfleet(job: Job, model_dir: Path, batch_size: int, args: argparse.Namespace,
                  out_dir: Path, extra_model_args: str = "") -> Run:
    model_args = f"pretrained={model_dir},dtype={args.dtype}{extra_model_args}"
    cmd = [sys.executable, "-m", "evalfleet.client.cli", "--log_level", "INFO", "eval",
           "--model", "hf", "--model_args", model_args, "--tasks", ",".join(job.tasks),
           "--num_fewshot", str(job.num_fewshot), "--limit", str(job.limit),
           "--batch_size", str(batch_size), "--device", args.device,
           "--output_path", str(out_dir), "--log_samples", "--no_progress",
           # a fresh store per run: the default one (in the cache dir) would hand the next run
           # the answers computed by this one
           "--store", ":memory:"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(args))
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"evalfleet failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    [results_file] = list(out_dir.rglob("results_*.json"))
    positions = int(json.loads(results_file.read_text())["config"]["positions_computed"])
    compute_s = worker_busy_seconds(proc.stderr)
    samples: dict[str, dict[int, dict]] = {}
    for path in out_dir.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        samples[task] = {int(r["doc_id"]): r for r in rows}
    return Run(wall, positions, compute_s, samples)


# ---------------------------------------------------------------- agreement


def agreement(ref: Run, other: Run, tasks: tuple[str, ...]) -> dict[str, Any]:
    """Per-sample comparison: 0/1 metric values that differ, and the largest |delta ll|."""
    changed, docs, ll_diff = 0, 0, 0.0
    for task in tasks:
        a, b = ref.samples.get(task, {}), other.samples.get(task, {})
        if set(a) != set(b):
            return {"docs": len(a), "changed": None, "max_abs_ll_diff": None,
                    "error": f"{task}: samples cover different documents"}
        docs += len(a)
        for doc_id, sa in a.items():
            sb = b[doc_id]
            if any(m in sa and float(sa[m]) != float(sb.get(m, float("nan"))) for m in METRICS):
                changed += 1
            for ra, rb in zip(sa["resps"], sb["resps"], strict=True):
                ll_diff = max(ll_diff, abs(float(ra[0][0]) - float(rb[0][0])))
    return {"docs": docs, "changed": changed, "max_abs_ll_diff": ll_diff}


# ---------------------------------------------------------------- main


def _job(name: str, tiny: bool) -> Job:
    job = JOBS[name]
    if tiny:
        job = Job(job.name, job.tasks, job.num_fewshot, TINY_LIMITS[name])
    return job


def _env(args: argparse.Namespace) -> dict[str, str]:
    # TOKENIZERS_PARALLELISM is left as it is: evalfleet's worker tokenizes a batch in one
    # call, which the tokenizers library spreads over the cores unless told not to
    return {**os.environ, "EVALFLEET_DATA_DIR": str(args.data_dir), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shape and limits, batch size 8 (the CPU smoke run)")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES),
                        help="model shape (default smollm2-1.7b, tiny with --tiny)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch_size", type=int, default=None, help="default 32 (8 with --tiny)")
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--churn_jobs", default=None,
                        help="jobs lm-eval also runs at --churn_batch_size (default mmlu,arc_easy;"
                             " arc_easy with --tiny; empty for none)")
    parser.add_argument("--churn_batch_size", type=int, default=None,
                        help="default 8 (2 with --tiny)")
    parser.add_argument("--no_plain", action="store_true",
                        help="skip the evalfleet prefix_sharing=false runs")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--data_dir", type=Path, default=_first_existing(
        REPO / "shared" / "data", REPO.parent / "shared" / "data"))
    parser.add_argument("--lmeval_tool", type=Path, default=_first_existing(
        REPO / "shared" / "tools" / "lmeval_local.py",
        REPO.parent / "shared" / "tools" / "lmeval_local.py"))
    parser.add_argument("--tokenizer", type=Path, default=_first_existing(
        REPO / "shared" / "tokenizer", REPO / "models" / "smollm2-135m"))
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/evalfleet-gpu-bench"))
    parser.add_argument("--lmeval_child", help=argparse.SUPPRESS)
    parser.add_argument("--child_job", help=argparse.SUPPRESS)
    parser.add_argument("--child_model", help=argparse.SUPPRESS)
    parser.add_argument("--child_include_path", help=argparse.SUPPRESS)
    parser.add_argument("--child_batch_size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    if args.lmeval_child:
        _lmeval_child(args)
        return

    shape = args.shape or ("tiny" if args.tiny else "smollm2-1.7b")
    batch_size = args.batch_size or (8 if args.tiny else 32)
    churn_bs = args.churn_batch_size or (2 if args.tiny else 8)
    churn = args.churn_jobs if args.churn_jobs is not None else (
        "arc_easy" if args.tiny else "mmlu,arc_easy")
    churn_jobs = {j for j in churn.split(",") if j}
    jobs = [_job(name, args.tiny) for name in args.jobs.split(",") if name]
    for path, what in ((args.data_dir, "--data_dir"), (args.lmeval_tool, "--lmeval_tool"),
                       (args.tokenizer, "--tokenizer")):
        if not path.exists():
            sys.exit(f"{what}: {path} does not exist")

    began = time.perf_counter()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    model_dir = build_model(shape, args.dtype, args.device, args.tokenizer, args.work_dir,
                            args.seed)
    print(f"model {model_dir} ({time.perf_counter() - began:.1f} s)", flush=True)
    run_dir = args.work_dir / f"run-{os.getpid()}"
    include = run_dir / "lm_tasks"
    subprocess.run([sys.executable, str(args.lmeval_tool), str(args.data_dir), str(include)],
                   check=True, capture_output=True)
    payload: dict[str, Any] = {"bench": "gpu", "device": args.device, "shape": shape,
                               "dtype": args.dtype, "batch_size": batch_size}
    rows = []
    try:
        for job in jobs:
            print(f"== {job.name}: {','.join(job.tasks)}, {job.num_fewshot}-shot, "
                  f"limit {job.limit}, batch size {batch_size}", flush=True)
            lm = run_lmeval(job, model_dir, include, batch_size, args,
                            run_dir / f"lm_{job.name}.json")
            ef = run_evalfleet(job, model_dir, batch_size, args, run_dir / f"ef_{job.name}")
            plain = None if args.no_plain else run_evalfleet(
                job, model_dir, batch_size, args, run_dir / f"efplain_{job.name}",
                ",prefix_sharing=false")
            lm_churn = run_lmeval(job, model_dir, include, churn_bs, args,
                                  run_dir / f"lm{churn_bs}_{job.name}.json") \
                if job.name in churn_jobs else None
            entry: dict[str, Any] = {
                "lmeval_wall_s": round(lm.wall_s, 2), "evalfleet_wall_s": round(ef.wall_s, 2),
                "wall_ratio": _ratio(ef.wall_s, lm.wall_s),
                "lmeval_positions": lm.positions, "evalfleet_positions": ef.positions,
                "positions_ratio": _ratio(ef.positions, lm.positions),
                "lmeval_positions_per_s": lm.positions_per_s,
                "evalfleet_positions_per_s": ef.positions_per_s,
                "evalfleet_compute_s": round(ef.compute_s, 2),
                "sharing_vs_lmeval": agreement(lm, ef, job.tasks),
            }
            if plain is not None:
                entry.update(plain_wall_s=round(plain.wall_s, 2),
                             plain_wall_ratio=_ratio(plain.wall_s, lm.wall_s),
                             plain_positions=plain.positions,
                             plain_positions_per_s=plain.positions_per_s,
                             plain_vs_lmeval=agreement(lm, plain, job.tasks))
            if lm_churn is not None:
                entry[f"lmeval_bs{churn_bs}_vs_bs{batch_size}"] = agreement(lm, lm_churn,
                                                                            job.tasks)
            payload[job.name] = entry
            rows.append((job.name, entry))
            for key, value in entry.items():
                print(f"  {key:28s} {value}", flush=True)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    print(f"load average at end: {os.getloadavg()}")
    head = ("job", "lm-eval s", "evalfleet s", "ratio", "plain s", "plain ratio", "lm pos",
            "ef pos", "ef pos/s", "lm pos/s", "acc chg", "plain chg", "lm churn")
    print(f"{head[0]:14s}" + "".join(f"{h:>12s}" for h in head[1:]))
    for name, e in rows:
        churn_key = next((k for k in e if k.startswith("lmeval_bs")), None)
        cells = (e["lmeval_wall_s"], e["evalfleet_wall_s"], e["wall_ratio"],
                 e.get("plain_wall_s"), e.get("plain_wall_ratio"), e["lmeval_positions"],
                 e["evalfleet_positions"], e["evalfleet_positions_per_s"],
                 e["lmeval_positions_per_s"], e["sharing_vs_lmeval"]["changed"],
                 e.get("plain_vs_lmeval", {}).get("changed"),
                 e[churn_key]["changed"] if churn_key else None)
        print(f"{name:14s}" + "".join(f"{c!s:>12s}" for c in cells))
    payload["total_s"] = round(time.perf_counter() - began, 1)
    print(f"total {payload['total_s']} s")
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
