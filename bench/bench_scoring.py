"""Benchmark evalfleet.scoring against lm-eval 0.4.13 on identical inputs.

1. bootstrap stderr of mcc and f1 (n items, ``--iters`` resamples): lm-eval's
   ``bootstrap_stderr`` (its process pool, sklearn metric fns) vs ``evalfleet.scoring.stderr``;
2. scoring one million multiple-choice loglikelihood requests (4 choices per doc):
   ``request_loglikelihoods`` + ``multiple_choice_metrics``, Numba compile/cache-load timed apart.

Prints a table, then (last line) one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time

import numpy as np


def _time(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _pairs(n: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.7, gold, 1 - gold)
    return list(zip(gold.tolist(), pred.tolist(), strict=True))


def _mc_inputs(n_requests: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_docs = n_requests // 4
    lens = rng.integers(1, 9, n_requests)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return {
        "token_logprobs": -rng.exponential(1.5, offsets[-1]).astype(np.float32),
        "greedy": rng.random(offsets[-1]) < 0.9,
        "offsets": offsets,
        "choice_offsets": np.arange(0, 4 * n_docs + 1, 4, dtype=np.int64),
        "gold_values": rng.integers(0, 4, n_docs),
        "gold_offsets": np.arange(n_docs + 1, dtype=np.int64),
        "choice_chars": rng.integers(1, 60, n_requests).astype(np.float64),
        "choice_bytes": rng.integers(1, 80, n_requests).astype(np.float64),
    }


MC_METRICS = ["acc", "acc_norm", "acc_bytes", "exact_match", "brier_score", "pred"]


def _score(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from evalfleet.scoring import multiple_choice_metrics, request_loglikelihoods

    ll, greedy = request_loglikelihoods(inp["token_logprobs"], inp["greedy"], inp["offsets"])
    return multiple_choice_metrics(
        ll, greedy, inp["choice_offsets"], inp["gold_values"], inp["gold_offsets"],
        inp["choice_chars"], inp["choice_bytes"], MC_METRICS,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=100000, help="bootstrap resamples")
    ap.add_argument("--n", type=int, default=1000, help="items per bootstrap")
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    from evalfleet.scoring import stderr

    import_s = time.perf_counter() - t0
    # first calls: Numba compile (or load from its disk cache)
    tiny = _mc_inputs(8, args.seed + 1)
    compile_s, _ = _time(lambda: (_score(tiny), stderr("matthews_corrcoef", _pairs(10, 1), 10),
                                  stderr("f1", _pairs(10, 1), 10)))

    from lm_eval.api import metrics as lm

    items = _pairs(args.n, args.seed)
    rows = []
    result: dict[str, float | str] = {"bench": "scoring"}
    for key, agg, fn in (("mcc", "matthews_corrcoef", lm.matthews_corrcoef),
                         ("f1", "f1", lm.f1_score)):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ref_s, ref = _time(lambda fn=fn: lm.bootstrap_stderr(fn, items, args.iters))
        ours_s, ours = _time(lambda agg=agg: stderr(agg, items, args.iters), repeat=3)
        rows.append((f"{key} bootstrap stderr (n={args.n}, iters={args.iters})",
                     ref_s, ours_s, ref, ours))
        result[f"{key}_lm_eval_s"] = round(ref_s, 4)
        result[f"{key}_evalfleet_s"] = round(ours_s, 5)
        result[f"{key}_speedup"] = round(ref_s / ours_s, 1)
        result[f"{key}_rel_diff"] = round(ours / ref - 1.0, 5)

    inp = _mc_inputs(args.requests, args.seed)
    mc_s, out = _time(lambda: _score(inp), repeat=3)
    rows.append((f"{args.requests:,} MC requests ({args.requests // 4:,} docs x 4)",
                 float("nan"), mc_s, float("nan"), float(out["acc"].mean())))
    result["mc_1m_requests_s"] = round(mc_s, 4)
    result["compile_s"] = round(compile_s, 3)
    result["import_s"] = round(import_s, 3)

    print(f"{'job':<52} {'lm-eval s':>10} {'evalfleet s':>12} {'lm-eval val':>12} "
          f"{'evalfleet val':>14}")
    for name, a, b, va, vb in rows:
        print(f"{name:<52} {a:>10.3f} {b:>12.5f} {va:>12.6f} {vb:>14.6f}")
    print(f"numba first-call (compile or cache load): {compile_s:.3f} s; import {import_s:.3f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
