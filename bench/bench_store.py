"""Answer-store throughput: evalfleet's SQLite and PostgreSQL stores beside lm-eval's cache.

The traffic is a coordinator's at peak: answers (a loglikelihood result of 8 token logprobs,
keyed by a 64-hex request id) written one worker batch at a time as batches return, then read
back all at once when the job scores (and by the next identical job). lm-eval 0.4.13's
``--use_cache`` stores the same answers in a ``SqliteDict`` (``CachingLM``): one row per
request through its cache hook, committed as it goes, and read back one key at a time; that path
is timed on the same answers. PostgreSQL is a throw-away server with its default durability
(``fsync`` on), started here from Debian's binaries (``tests/pg_server.py``).

Run: ``.venv/bin/python bench/bench_store.py`` — the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from evalfleet.server.store import AnswerSlices, JobStore, PostgresJobStore, SqliteJobStore
from evalfleet.server.wire import _varint
from evalfleet.v1 import inference_pb2 as ipb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _answers(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        result = ipb.LoglikelihoodResponse().results.add(
            request_id=f"{seed:08x}{i:056x}", logprobs=[-0.25 - i % 7] * 8, greedy=[True] * 8)
        out.append((result.request_id, result.SerializeToString()))
    return out


async def _time_store(store: JobStore, answers: list[tuple[str, bytes]], batch: int,
                      writers: int) -> dict[str, float]:
    await store.open()
    fp = f"sha256:{time.time_ns():064x}"
    batches = [answers[i:i + batch] for i in range(0, len(answers), batch)]
    start = time.perf_counter()
    for b in batches:  # one job: batches stored as they return, one after another
        await store.put_answers(fp, b)
    put_s = time.perf_counter() - start
    ids = [rid for rid, _ in answers]
    start = time.perf_counter()
    got = await store.get_answers(fp, ids)
    get_s = time.perf_counter() - start
    assert len(got) == len(answers)
    # Several jobs (or workers' batches) writing at once, fresh keys.
    fp2 = fp + "-concurrent"
    concurrent_s = await _write_at_once(store.put_answers, fp2, batches, writers)
    assert await store.count_answers(fp2) == len(answers)
    # The dispatch's path: each batch's answers as spans of its response, several workers'
    # batches returning at once.
    fp3 = fp + "-slices"
    slices_s = await _write_at_once(store.put_answer_slices, fp3,
                                    [_response_slices(b) for b in batches], writers)
    assert await store.count_answers(fp3) == len(answers)
    await store.close()
    n = len(answers)
    return {"put_per_s": n / put_s, "get_per_s": n / get_s,
            f"put_{writers}_writers_per_s": n / concurrent_s,
            f"put_slices_{writers}_writers_per_s": n / slices_s}


async def _write_at_once(put, fp: str, batches: list, writers: int) -> float:
    """Seconds for ``writers`` concurrent writers to ``put`` every batch under ``fp``."""
    queue = list(batches)

    async def writer() -> None:
        while queue:
            await put(fp, queue.pop())

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return time.perf_counter() - start


def _response_slices(batch: list[tuple[str, bytes]]) -> AnswerSlices:
    """A batch's answers as a worker's response holds them (``results`` entries)."""
    response = ipb.LoglikelihoodResponse(
        results=[ipb.TokenScores.FromString(answer) for _, answer in batch]).SerializeToString()
    starts, ends, pos = [], [], 0
    for _, answer in batch:
        pos += 1 + len(_varint(len(answer)))
        starts.append(pos)
        pos += len(answer)
        ends.append(pos)
    assert all(response[a:b] == answer for (_, answer), a, b in zip(batch, starts, ends,
                                                                   strict=True))
    return AnswerSlices([rid for rid, _ in batch], response, np.array(starts), np.array(ends))


def _time_lmeval_cache(path: Path, answers: list[tuple[str, bytes]]) -> dict[str, float]:
    """lm-eval's CachingLM path: SqliteDict(autocommit=True), one key per request."""
    from sqlitedict import SqliteDict

    values = [(-1.5, True)] * len(answers)  # what lm-eval caches for a loglikelihood request
    db = SqliteDict(str(path), autocommit=True)
    start = time.perf_counter()
    for (rid, _), value in zip(answers, values, strict=True):
        db[rid] = value  # CacheHook.add_partial, per request
    db.commit()
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    found = 0
    for rid, _ in answers:
        if rid in db:
            _ = db[rid]
            found += 1
    get_s = time.perf_counter() - start
    db.close()
    assert found == len(answers)
    return {"put_per_s": len(answers) / put_s, "get_per_s": len(answers) / get_s}


async def main(n: int, batch: int, writers: int, lmeval_n: int, postgres: bool) -> dict:
    answers = _answers(n)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["evalfleet_sqlite"] = await _time_store(
            SqliteJobStore(Path(tmp) / "store.db"), answers, batch, writers)
        out["evalfleet_sqlite_memory"] = await _time_store(
            SqliteJobStore(":memory:"), answers, batch, writers)
        out["lmeval_sqlitedict"] = _time_lmeval_cache(Path(tmp) / "lm_cache.sqlite",
                                                      answers[:lmeval_n])
    if postgres:
        from pg_server import PostgresServer, unavailable_reason

        reason = unavailable_reason()
        if reason:
            print(f"PostgreSQL skipped: {reason}")
        else:
            server = PostgresServer(durable=True).start()
            try:
                out["evalfleet_postgres"] = await _time_store(
                    PostgresJobStore(server.create_database("bench")), answers, batch, writers)
            finally:
                server.stop()
    print(f"{n} answers ({len(answers[0][1])} bytes each), batches of {batch}; "
          f"lm-eval's cache on {lmeval_n}")
    for name, figures in out.items():
        print(f"  {name:26s} " + "  ".join(f"{k} {v:10,.0f}" for k, v in figures.items()))
    ref = out["lmeval_sqlitedict"]
    ratios = {f"{name}_{k}_over_lmeval": round(v / ref[k], 1)
              for name, figures in out.items() if name != "lmeval_sqlitedict"
              for k, v in figures.items() if k in ref}
    return {"bench": "store", "answers": n, "batch": batch, "writers": writers,
            **{f"{name}_{k}": round(v) for name, figures in out.items()
               for k, v in figures.items()}, **ratios}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--lmeval_answers", type=int, default=20_000,
                        help="answers through lm-eval's cache (one commit per request)")
    parser.add_argument("--no_postgres", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.answers, args.batch, args.writers,
                                      args.lmeval_answers, not args.no_postgres))))
