"""GPU check: evalfleet's hf and vllm backends and lm-eval's hf backend on one model and tasks;
agreement per sample and throughput. Run by bench/gpu_check.sh (which bounds it to 8 minutes).

For each task, per sample: the largest |loglikelihood difference| against lm-eval's hf and the
share of identical acc / exact_match; per run: wall seconds and requests per second. The last
line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def lmeval_hf(model_dir: str, tasks: list[str], limit: int, dtype: str, include: str) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    out = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype={dtype}",
                          tasks=tasks, limit=limit, num_fewshot=0, batch_size=32,
                          device="cuda", log_samples=True, bootstrap_iters=0,
                          gen_kwargs="max_gen_toks=128",
                          task_manager=TaskManager(include_path=include))
    return {"seconds": time.perf_counter() - started,
            "samples": {t: {s["doc_id"]: s for s in out["samples"][t]} for t in tasks},
            "results": out["results"]}


async def evalfleet(backend_name: str, model_args: dict, batch_size, tasks: list[str],
                    limit: int, data_dir: str) -> dict:
    import grpc

    from evalfleet.inference.server import load_backend, start_worker
    from evalfleet.server.service import start_coordinator
    from evalfleet.v1 import coordinator_pb2 as cpb
    from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

    loaded = time.perf_counter()
    backend = await asyncio.to_thread(load_backend, backend_name, model_args, batch_size)
    load_s = time.perf_counter() - loaded
    worker = await start_worker(backend, model_args=model_args)
    coordinator, _ = await start_coordinator(workers=[worker.address], data_dir=data_dir)
    try:
        async with grpc.aio.insecure_channel(coordinator.address) as channel:
            stub = cpb_grpc.EvaluationServiceStub(channel)
            started = time.perf_counter()
            ev = await stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                model=backend_name, tasks=tasks, limit=limit, num_fewshot=0, log_samples=True,
                bootstrap_iters=0, gen_kwargs="max_gen_toks=128")))
            async for _ in stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=ev.id)):
                pass
            seconds = time.perf_counter() - started
            final = await stub.GetEvaluation(cpb.GetEvaluationRequest(id=ev.id))
            if final.state != cpb.EVALUATION_STATE_SUCCEEDED:
                raise SystemExit(f"{backend_name}: {final.error}")
            results = json.loads((await stub.GetResults(
                cpb.GetResultsRequest(id=ev.id))).results_json)
            samples: dict = {}
            async for record in stub.StreamSamples(cpb.StreamSamplesRequest(id=ev.id)):
                sample = json.loads(record.json)
                samples.setdefault(record.task, {})[sample["doc_id"]] = sample
    finally:
        await coordinator.stop(0.5)
        await worker.stop(0.5)
        del backend
    return {"seconds": seconds, "load_seconds": load_s, "requests": final.unique_requests,
            "samples": samples, "results": results["results"]}


def agreement(ref: dict, run: dict, tasks: list[str]) -> dict:
    out = {}
    for task in tasks:
        worst, same, total = 0.0, 0, 0
        for doc_id, ref_sample in ref["samples"][task].items():
            mine = run["samples"][task][doc_id]
            metric = "acc" if "acc" in ref_sample else "exact_match"
            same += mine.get(metric) == ref_sample.get(metric)
            total += 1
            if metric == "acc":
                for a, b in zip(ref_sample["resps"], mine["resps"], strict=True):
                    worst = max(worst, abs(float(a[0][0]) - float(b[0][0])))
        out[task] = {"max_abs_ll_diff": worst, "same_metric_share": same / max(1, total),
                     "docs": total}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", default=str(REPO / "models" / "smollm2-135m"))
    parser.add_argument("--tasks", default="arc_easy,gsm8k")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--data_dir", default=os.environ.get(
        "EVALFLEET_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--include", required=True, help="lm-eval override task dir")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    ref = lmeval_hf(args.model_dir, tasks, args.limit, args.dtype, args.include)
    print(f"lm-eval hf: {ref['seconds']:.1f} s", flush=True)
    hf = asyncio.run(evalfleet("hf", {"pretrained": args.model_dir, "dtype": args.dtype,
                                      "device": "cuda"}, 32, tasks, args.limit, args.data_dir))
    print(f"evalfleet hf: {hf['seconds']:.1f} s", flush=True)
    vllm = asyncio.run(evalfleet("vllm", {"pretrained": args.model_dir, "dtype": args.dtype,
                                          "gpu_memory_utilization": 0.5,
                                          "max_model_len": 2048}, "auto", tasks, args.limit,
                                 args.data_dir))
    print(f"evalfleet vllm: {vllm['seconds']:.1f} s (engine start {vllm['load_seconds']:.0f} s)",
          flush=True)
    report = {
        "bench": "gpu_check", "model": args.model_dir, "tasks": tasks, "limit": args.limit,
        "dtype": args.dtype,
        "seconds": {"lmeval_hf": round(ref["seconds"], 2), "evalfleet_hf": round(hf["seconds"], 2),
                    "evalfleet_vllm": round(vllm["seconds"], 2)},
        "requests_per_s": {"evalfleet_hf": round(hf["requests"] / hf["seconds"], 1),
                           "evalfleet_vllm": round(vllm["requests"] / vllm["seconds"], 1)},
        "agreement_vs_lmeval_hf": {"evalfleet_hf": agreement(ref, hf, tasks),
                                   "evalfleet_vllm": agreement(ref, vllm, tasks)},
    }
    for name, run in (("evalfleet_hf", hf), ("evalfleet_vllm", vllm)):
        for task in tasks:
            print(name, task, json.dumps(run["results"][task], sort_keys=True)[:300])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
