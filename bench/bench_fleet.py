"""The coordinator's dispatch path at fleet scale, on simulated workers.

Simulated workers (``bench/simworker.py``: real gRPC servers in their own processes that answer
every batch after a fixed delay, no model) serve an MMLU-sized job: the real ``mmlu`` group
planned by the task engine, 0-shot (56,168 loglikelihood requests), or, without the data, as
many synthetic MMLU-like requests. The job goes through the coordinator's real dispatch
(``dispatch.compute_missing``: store look-up, registry, scheduler, batches on the wire, answers
written to the store as each batch returns); the store is an in-memory SQLite ``JobStore``.

Two figures:

- ``coordinator_rps``: requests per second with instant workers (4 by default), from the start
  of the dispatch (store look-up included) to the last answer stored. Target >= 100,000. Also
  printed: the CPU seconds the coordinator's process spent (all threads), as requests per CPU
  second, which does not depend on what else runs on the machine, and, as a diagnostic, the
  same dispatch with a store that keeps nothing (the store's share of the cost).
- ``efficiency_16``: with a fixed delay per batch, the 16-worker throughput over 16 times the
  1-worker throughput. Target >= 0.9.

Run: ``.venv/bin/python bench/bench_fleet.py`` (the last line is JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: CPU seconds the coordinator's process (all its threads) spent in each dispatch.
CPU_SECONDS: list[float] = []
DATA_DIR = os.environ.get("EVALFLEET_DATA_DIR", str(REPO.parent / "shared" / "data"))


def start_workers(n: int, batch_delay: float) -> tuple[list[str], list[subprocess.Popen]]:
    """``n`` simulated workers, each in its own process."""
    procs = [subprocess.Popen([sys.executable, str(REPO / "bench" / "simworker.py"),
                               "--batch_delay", str(batch_delay)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(n)]
    addresses = []
    for proc in procs:
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"simulated worker did not start: {line!r}")
        addresses.append(line.split()[-1])
    return addresses, procs


def plan_job(requests: int):
    """The MMLU plan (0-shot), or synthetic MMLU-like requests without the data."""
    from evalfleet.server.planning import build_plan
    from evalfleet.server.spec import parse_spec
    from evalfleet.v1 import coordinator_pb2 as cpb

    spec = cpb.EvaluationSpec(model="sim", tasks=["mmlu"], num_fewshot=0, bootstrap_iters=0)
    parsed = parse_spec(spec)
    started = time.perf_counter()
    if (Path(DATA_DIR) / "cais" / "mmlu").is_dir() and requests == 56_168:
        plan = build_plan(parsed, DATA_DIR, [])
        source = "mmlu (task engine, 0-shot)"
    else:
        from evalfleet.common.ids import request_id
        from evalfleet.server.planning import JobPlan
        from evalfleet.server.workers import WorkItem

        question = ("The following are multiple choice questions (with answers) about "
                    "astronomy.\n\nWhat is the main source of the Sun's energy?\nA. fusion\n"
                    "B. fission\nC. combustion\nD. gravity\nAnswer:")
        work = {}
        for i in range(requests):
            args = (f"{i // 4} {question}", f" {'ABCD'[i % 4]}")
            rid = request_id("loglikelihood", args)
            work[rid] = WorkItem(rid, "loglikelihood", args)
        plan = JobPlan([], [], [], work)
        source = "synthetic MMLU-like"
    return parsed, plan, source, time.perf_counter() - started


class _NullStore:
    """Keeps nothing: isolates the dispatch's own cost from the store's (a diagnostic)."""

    async def get_answers(self, fingerprint, request_ids):
        return {}

    async def has_answers(self, fingerprint):
        return False

    async def put_answers(self, fingerprint, answers):
        self.count = getattr(self, "count", 0) + len(answers)

    put_answer_slices = put_answers

    async def close(self):
        pass


async def dispatch_once(parsed, plan, addresses: list[str], *, max_batch_items: int,
                        null_store: bool = False) -> float:
    """Seconds to compute the whole plan on ``addresses`` through ``compute_missing``."""
    from evalfleet.server.dispatch import compute_missing
    from evalfleet.server.job import Job
    from evalfleet.server.registry import READY, WorkerRegistry
    from evalfleet.server.scheduler import Scheduler, SchedulerConfig
    from evalfleet.server.store import SqliteJobStore

    registry = WorkerRegistry(health_interval_s=1.0)
    registry.add_static(addresses)
    while not all(w.state == READY for w in registry.workers.values()):
        await registry.wait_changed(0.1)
    scheduler = Scheduler(registry, SchedulerConfig(max_batch_items=max_batch_items))
    scheduler.start()
    store = _NullStore() if null_store else SqliteJobStore(":memory:")
    if not null_store:
        await store.open()  # a coordinator opens its store when it starts, not per job
    try:
        info = next(iter(registry.workers.values())).info
        job = Job(id="bench", parsed=parsed, plan=plan, model_info=info)
        started, cpu = time.perf_counter(), time.process_time()
        await compute_missing(job, store, scheduler)
        elapsed = time.perf_counter() - started
        CPU_SECONDS.append(time.process_time() - cpu)
        stored = store.count if null_store else len(await store.get_answers(
            info.fingerprint, list(plan.work)))
        assert stored == len(plan.work), (stored, len(plan.work))
    finally:
        await scheduler.close()
        await registry.close()
        await store.close()
    return elapsed


async def main(args: argparse.Namespace) -> dict:
    parsed, plan, source, plan_s = plan_job(args.requests)
    n = len(plan.work)
    print(f"job: {n} loglikelihood requests ({source}; planned in {plan_s:.1f} s)")
    print(f"load: {os.getloadavg()[0]:.1f} (1-min average) on {os.cpu_count()} CPUs")
    instant, procs = start_workers(args.instant_workers, 0.0)
    delayed, procs2 = start_workers(16, args.batch_delay)
    try:
        await dispatch_once(parsed, plan, instant[:1], max_batch_items=args.instant_batch)
        CPU_SECONDS.clear()
        runs = [await dispatch_once(parsed, plan, instant, max_batch_items=args.instant_batch)
                for _ in range(args.repeats)]
        rps = n / min(runs)
        cpu_rps = n / min(CPU_SECONDS)
        print(f"instant workers x{args.instant_workers}, batches <= {args.instant_batch}: "
              f"{min(runs):.3f} s -> {rps:,.0f} requests/s; the coordinator's process used "
              f"{min(CPU_SECONDS):.3f} CPU s ({cpu_rps:,.0f} requests per CPU second)")
        CPU_SECONDS.clear()
        bare = min([await dispatch_once(parsed, plan, instant, max_batch_items=args.instant_batch,
                                        null_store=True) for _ in range(args.repeats)])
        print(f"  the same without a store (diagnostic): {bare:.3f} s -> {n / bare:,.0f} "
              f"requests/s, {n / min(CPU_SECONDS):,.0f} requests per CPU second")
        one = await dispatch_once(parsed, plan, delayed[:1], max_batch_items=args.delayed_batch)
        sixteen = min([await dispatch_once(parsed, plan, delayed,
                                           max_batch_items=args.delayed_batch)
                       for _ in range(args.repeats)])
        efficiency = (n / sixteen) / (16 * n / one)
        print(f"{args.batch_delay * 1000:.0f} ms per batch, batches <= {args.delayed_batch}: "
              f"1 worker {one:.2f} s ({n / one:,.0f}/s), 16 workers {sixteen:.2f} s "
              f"({n / sixteen:,.0f}/s), efficiency {efficiency:.3f}")
    finally:
        for proc in [*procs, *procs2]:
            proc.terminate()
        for proc in [*procs, *procs2]:
            proc.wait(10)
    return {"bench": "fleet", "coordinator_rps": round(rps), "efficiency_16": round(efficiency, 3),
            "coordinator_rps_per_cpu_second": round(cpu_rps),
            "dispatch_rps_without_store": round(n / bare), "requests": n, "job": source,
            "instant_workers": args.instant_workers,
            "instant_seconds": round(min(runs), 3), "batch_delay_s": args.batch_delay,
            "one_worker_s": round(one, 3), "sixteen_workers_s": round(sixteen, 3),
            "store": "SqliteJobStore(':memory:')", "load_1min": round(os.getloadavg()[0], 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=56_168)
    parser.add_argument("--instant_workers", type=int, default=4)
    parser.add_argument("--instant_batch", type=int, default=4096)
    parser.add_argument("--batch_delay", type=float, default=0.1)
    parser.add_argument("--delayed_batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    os.environ.setdefault("EVALFLEET_LOG_LEVEL", "WARNING")
    from evalfleet.common.logging import configure_logging

    configure_logging(json=False, level="WARNING")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
