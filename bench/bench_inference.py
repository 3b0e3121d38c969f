"""Inference speed: lm-eval 0.4.13 and evalfleet on the same model, data and jobs, in one run.

Acceptance benchmark of "Inference speed: forward every distinct prefix once". For each job it
runs lm-eval in this process (``simple_evaluate``, ``--model hf``, batch size 8, float32, cpu) and
evalfleet's CLI with its embedded services in a subprocess (batch size 8), both reading the local
data mirror offline, and measures:

- wall time of each side, each a fresh process per job as a user runs it: lm-eval (a child
  process of this script: interpreter start, ``import lm_eval``, ``simple_evaluate`` with model
  load and task indexing) and evalfleet's CLI (interpreter start, imports, embedded services,
  model load). The ratio uses these. The time of lm-eval's ``simple_evaluate`` call alone is
  printed too (lm-eval warm: imports already paid);
- lm-eval's model positions: ``HFLM._model_call`` is wrapped to add batch x padded length of
  every forward;
- evalfleet's positions: ``config.positions_computed`` of the results JSON it writes (the job
  total the workers counted, padding included);
- the trie floor: the nodes of a token trie over every loglikelihood request's input, i.e. the
  tokens of (context + continuation) without the last token, tokenized as lm-eval's
  ``TemplateLM._encode_pair`` does for a causal model, over the requests lm-eval itself sent
  (captured from ``HFLM._loglikelihood_tokens``; the tokens it computed are used as a cross-check);
- per task, acc (and acc_norm) of both sides, per sample and aggregated. A metric whose per-sample
  values are 0/1 (an argmax: acc, acc_norm of multiple-choice tasks) is "identical" only when every
  sample has the same value (aggregates then differ by summation rounding at most, 1e-12). A
  real-valued metric (truthfulqa_mc2's acc, a normalised probability) is "identical" when every
  sample and the aggregate agree within ``--continuous_tol`` (default 1e-4, the per-sample
  loglikelihood tolerance: probabilities from loglikelihoods 1e-5 apart differ by ~1e-6, never
  bit for bit once batch shapes differ). The max abs difference of per-sample loglikelihoods and
  of aggregated metrics are printed and reported too.

Full run (the acceptance numbers) and a quick smoke run:

    .venv/bin/python bench/bench_inference.py
    .venv/bin/python bench/bench_inference.py --jobs truthfulqa_mc2 --limit_scale 0.15

Prints a table, then (last line) one JSON object: ratios are evalfleet / lm-eval, floor ratio is
floor / lm-eval positions.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
METRICS = ("acc,none", "acc_norm,none")
ROUNDING_TOL = 1e-12  # aggregates of identical 0/1 samples: summation-order rounding only
CONTINUOUS_TOL = 1e-4  # real-valued metrics: the per-sample loglikelihood tolerance


@dataclass(frozen=True)
class Job:
    name: str
    tasks: tuple[str, ...]
    num_fewshot: int | None
    limit: int


JOBS = {
    "arc_challenge": Job("arc_challenge", ("arc_challenge",), 25, 10),
    "mmlu": Job("mmlu", ("mmlu_abstract_algebra", "mmlu_anatomy", "mmlu_astronomy"), 5, 10),
    "truthfulqa_mc2": Job("truthfulqa_mc2", ("truthfulqa_mc2",), None, 20),
}


# ---------------------------------------------------------------- tokenization and trie floor


def encode_pair(encode: Callable[..., list[int]], context: str,
                continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) of a non-empty context, for a causal model.

    Whitespace at the end of the context belongs to the continuation; the continuation tokens
    are what the tokenization of the joined text has beyond the context's own tokens.
    """
    stripped = context.rstrip()
    joint = encode(context + continuation)
    ctx = encode(stripped)
    return ctx, joint[len(ctx):]


def request_input(encode: Callable[..., list[int]], prefix_token_id: int, context: str,
                  continuation: str, max_length: int) -> list[int]:
    """The tokens lm-eval's hf model forwards for one loglikelihood request."""
    if context:
        ctx, cont = encode_pair(encode, context, continuation)
    else:  # empty context: conditioned on the prefix token (unless the continuation starts so)
        cont = encode(continuation, add_special_tokens=False)
        ctx = [prefix_token_id] if cont[0] != prefix_token_id else []
    return model_input(ctx + cont, max_length)


def model_input(tokens: Sequence[int], max_length: int) -> list[int]:
    """Keep the last ``max_length + 1`` tokens, then drop the last one (it is only a target)."""
    return list(tokens[-(max_length + 1):][:-1])


def trie_floor(sequences: Iterable[Sequence[int]]) -> int:
    """Nodes (root excluded) of a token trie over ``sequences``: every distinct prefix once.

    In sorted order, the longest prefix a sequence shares with any earlier one is the prefix it
    shares with its predecessor, so each sequence adds ``len - lcp(previous)`` new nodes.
    """
    total, prev = 0, ()
    for seq in sorted({tuple(s) for s in sequences}):
        lcp, limit = 0, min(len(seq), len(prev))
        while lcp < limit and seq[lcp] == prev[lcp]:
            lcp += 1
        total += len(seq) - lcp
        prev = seq
    return total


# ---------------------------------------------------------------- the two sides


@dataclass
class Side:
    wall_s: float = 0.0
    call_s: float | None = None  # lm-eval: the simple_evaluate call alone
    positions: int = 0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: dict[str, dict[int, dict]] = field(default_factory=dict)


@dataclass
class _Probe:
    """Counters filled by the wrapped HFLM methods during one lm-eval run."""
    positions: int = 0
    lm: Any = None
    requests: list = field(default_factory=list)  # ((context, continuation), ctx_enc, cont_enc)


def _install_probe() -> tuple[_Probe, Callable[[], None]]:
    """Wrap HFLM's model call and token-level loglikelihood; returns the probe and an undo."""
    from lm_eval.models.huggingface import HFLM

    probe = _Probe()
    model_call, ll_tokens = HFLM._model_call, HFLM._loglikelihood_tokens

    def counted_call(self, inps, *args, **kwargs):
        probe.positions += int(inps.shape[0]) * int(inps.shape[1])
        return model_call(self, inps, *args, **kwargs)

    def captured(self, requests, *args, **kwargs):
        probe.lm = self
        probe.requests.extend(requests)
        return ll_tokens(self, requests, *args, **kwargs)

    def restore() -> None:
        HFLM._model_call, HFLM._loglikelihood_tokens = model_call, ll_tokens

    HFLM._model_call, HFLM._loglikelihood_tokens = counted_call, captured
    return probe, restore


def run_lmeval(job: Job, limit: int, model_dir: str, include_path: Path,
               batch_size: int) -> tuple[Side, int, int]:
    """lm-eval in-process; returns its side, the trie floor, and the floor of its own tokens."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    probe, restore = _install_probe()
    try:
        start = time.perf_counter()  # task indexing counts: lm-eval's CLI does it every run
        task_manager = TaskManager(include_path=str(include_path))
        out = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={model_dir},dtype=float32",
            tasks=list(job.tasks), num_fewshot=job.num_fewshot, limit=limit,
            batch_size=batch_size, device="cpu", task_manager=task_manager, log_samples=True)
        wall = time.perf_counter() - start
    finally:
        restore()
    lm = probe.lm
    floor = trie_floor(
        request_input(lm.tok_encode, lm.prefix_token_id, ctx, cont, lm.max_length)
        for (ctx, cont), _, _ in probe.requests)
    floor_lm_tokens = trie_floor(model_input(c + k, lm.max_length) for _, c, k in probe.requests)
    side = Side(wall, wall, probe.positions, out["results"],
                {task: {s["doc_id"]: s for s in rows} for task, rows in out["samples"].items()})
    del out, probe, lm
    gc.collect()
    return side, floor, floor_lm_tokens


def run_lmeval_process(job: Job, limit: int, model_dir: str, include_path: Path,
                       batch_size: int, out_file: Path) -> tuple[Side, int, int]:
    """``run_lmeval`` in a fresh child process; its wall time is the whole process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--lmeval_child", str(out_file),
           "--jobs", job.name, "--limit_scale", "1", "--child_limit", str(limit),
           "--model_dir", model_dir, "--child_include_path", str(include_path),
           "--batch_size", str(batch_size)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"lm-eval failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    doc = json.loads(out_file.read_text())
    samples = {task: {int(r["doc_id"]): r for r in rows} for task, rows in doc["samples"].items()}
    side = Side(wall, doc["call_s"], doc["positions"], doc["results"], samples)
    return side, doc["floor"], doc["floor_lm"]


def _lmeval_child(args: argparse.Namespace) -> None:
    """Entry of the child process: run lm-eval on one job and write what the parent needs."""
    side, floor, floor_lm = run_lmeval(JOBS[args.jobs], args.child_limit, args.model_dir,
                                       Path(args.child_include_path), args.batch_size)
    Path(args.lmeval_child).write_text(json.dumps({
        "call_s": side.call_s, "positions": side.positions, "results": side.results,
        "samples": {task: list(rows.values()) for task, rows in side.samples.items()},
        "floor": floor, "floor_lm": floor_lm}, default=str))


def run_evalfleet(job: Job, limit: int, model_dir: str, out_dir: Path, batch_size: int,
                  env: dict[str, str]) -> Side:
    cmd = [str(Path(sys.executable).parent / "evalfleet"), "eval", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype=float32", "--tasks", ",".join(job.tasks),
           *(["--num_fewshot", str(job.num_fewshot)] if job.num_fewshot is not None else []),
           "--limit", str(limit), "--batch_size", str(batch_size), "--device", "cpu",
           "--output_path", str(out_dir), "--log_samples", "--no_progress",
           # a fresh store per run: the default one (in the cache dir) would answer a repeated
           # run from its stored answers and show a speed-up that is not computing faster
           "--store", ":memory:"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"evalfleet failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    [results_file] = list(out_dir.rglob("results_*.json"))
    doc = json.loads(results_file.read_text())
    samples: dict[str, dict[int, dict]] = {}
    for path in out_dir.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        samples[task] = {r["doc_id"]: r for r in rows}
    return Side(wall, None, int(doc["config"]["positions_computed"]), doc["results"], samples)


def compare(job: Job, lm: Side, ef: Side,
            continuous_tol: float = CONTINUOUS_TOL) -> tuple[bool, float, float, list[str]]:
    """(metrics identical, max abs metric diff, max abs per-sample loglikelihood diff, lines)."""
    identical, metric_diff, ll_diff, lines = True, 0.0, 0.0, []
    for task in job.tasks:
        ref_samples, our_samples = lm.samples.get(task, {}), ef.samples.get(task, {})
        if set(ref_samples) != set(our_samples):
            lines.append(f"  {task}: samples cover different doc ids")
            identical, metric_diff, ll_diff = False, float("inf"), float("inf")
            continue
        for key in METRICS:
            if key not in lm.results.get(task, {}):
                continue
            name = key.split(",")[0]
            ref_values = [float(s[name]) for s in ref_samples.values()]
            binary = all(v in (0.0, 1.0) for v in ref_values)
            tol = 0.0 if binary else continuous_tol
            sample_diff = max((abs(float(ref_samples[d][name]) - float(our_samples[d].get(
                name, float("inf")))) for d in ref_samples), default=0.0)
            ref, ours = lm.results[task][key], ef.results.get(task, {}).get(key)
            diff = float(abs(ours - ref)) if isinstance(ours, int | float) else float("inf")
            same = sample_diff <= tol and diff <= max(tol, ROUNDING_TOL)
            identical &= same
            metric_diff = max(metric_diff, diff)
            kind = "0/1 per sample" if binary else f"real-valued, tol {continuous_tol:g}"
            lines.append(f"  {task:24s} {key:14s} lm-eval {ref!s:22.20} evalfleet {ours!s:22.20}"
                         f" ({kind}; max per-sample diff {sample_diff:.3g})"
                         f"{'' if same else '  DIFF'}")
        for doc_id, ref in ref_samples.items():
            mine = our_samples[doc_id]["resps"]
            if len(mine) != len(ref["resps"]):
                identical, ll_diff = False, float("inf")
                continue
            for a, b in zip(ref["resps"], mine, strict=True):
                ll_diff = max(ll_diff, abs(float(a[0][0]) - float(b[0][0])))
    return identical, metric_diff, ll_diff, lines


# ---------------------------------------------------------------- main


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default=",".join(JOBS),
                        help=f"comma-separated subset of {','.join(JOBS)}")
    parser.add_argument("--limit_scale", type=float, default=1.0,
                        help="multiply every job's limit (at least 1 document per task)")
    parser.add_argument("--model_dir", default=str(REPO / "models" / "smollm2-135m"))
    parser.add_argument("--data_dir", default=str(SHARED / "data"))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--continuous_tol", type=float, default=CONTINUOUS_TOL,
                        help="largest difference of a real-valued metric still called identical")
    parser.add_argument("--lmeval_child", help=argparse.SUPPRESS)  # internal: child process
    parser.add_argument("--child_limit", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child_include_path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    jobs = [JOBS[name] for name in args.jobs.split(",") if name]

    # before lm_eval / datasets are imported: they read these at import time
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env = {**os.environ, "EVALFLEET_DATA_DIR": args.data_dir}
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    if args.lmeval_child:
        _lmeval_child(args)
        return

    rows, payload = [], {"bench": "inference"}
    all_identical, worst_ll, worst_metric = True, 0.0, 0.0
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        subprocess.run([sys.executable, str(SHARED / "tools" / "lmeval_local.py"), args.data_dir,
                        str(tmp_path / "lm_tasks")], check=True, capture_output=True)
        for job in jobs:
            limit = max(1, round(job.limit * args.limit_scale))
            print(f"== {job.name}: tasks {','.join(job.tasks)}, num_fewshot {job.num_fewshot}, "
                  f"limit {limit}", flush=True)
            lm, floor, floor_lm = run_lmeval_process(
                job, limit, args.model_dir, tmp_path / "lm_tasks", args.batch_size,
                tmp_path / f"lm_{job.name}.json")
            if floor != floor_lm:
                print(f"  WARNING: floor from lm-eval's own tokens is {floor_lm}, not {floor}")
            ef = run_evalfleet(job, limit, args.model_dir, tmp_path / f"ef_{job.name}",
                               args.batch_size, env)
            identical, metric_diff, ll_diff, lines = compare(job, lm, ef, args.continuous_tol)
            print("\n".join(lines), flush=True)
            all_identical &= identical
            worst_ll, worst_metric = max(worst_ll, ll_diff), max(worst_metric, metric_diff)
            rows.append((job.name, lm.wall_s, lm.call_s, ef.wall_s, _ratio(ef.wall_s, lm.wall_s),
                         lm.positions, ef.positions, _ratio(ef.positions, lm.positions), floor,
                         _ratio(floor, lm.positions), identical))
            payload[f"{job.name}_wall_ratio"] = _ratio(ef.wall_s, lm.wall_s)
            payload[f"{job.name}_positions_ratio"] = _ratio(ef.positions, lm.positions)
            payload[f"{job.name}_floor_ratio"] = _ratio(floor, lm.positions)

    print(f"load average at end: {os.getloadavg()}")
    head = ("job", "lm-eval s", "lm-eval call s", "evalfleet s", "wall ratio", "lm-eval pos",
            "evalfleet pos", "pos ratio", "floor", "floor ratio", "metrics identical")
    print(f"{head[0]:16s}" + "".join(f"{h:>15s}" for h in head[1:-1]) + f"  {head[-1]}")
    for name, lw, lc, ew, wr, lp, ep, pr, fl, fr, same in rows:
        print(f"{name:16s}{lw:15.1f}{lc:15.1f}{ew:15.1f}{wr!s:>15s}{lp:15d}{ep:15d}{pr!s:>15s}"
              f"{fl:15d}{fr!s:>15s}  {same}")
    print(f"per-sample loglikelihood max abs diff {worst_ll:.3g}, "
          f"acc/acc_norm max abs diff {worst_metric:.3g}")
    finite = lambda x: x if x != float("inf") else None  # noqa: E731 (missing samples)
    payload.update(metrics_identical=bool(all_identical), max_abs_ll_diff=finite(worst_ll),
                   max_abs_metric_diff=finite(worst_metric))
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
