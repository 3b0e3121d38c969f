"""The ``JobStore`` contract, run against SQLite (a file) and a real PostgreSQL server.

Every method, compare-and-set refusals, lease expiry and takeover, owners racing to claim the
same jobs (in one process and across processes), answers shared across jobs, results stored
before the terminal state, and samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.server.store import (
    AnswerSlices,
    JobRecord,
    PostgresJobStore,
    SqliteJobStore,
    StoreSchemaError,
    StoreUnavailableError,
    open_store,
)
from evalfleet.server.store.base import SAMPLES_PAGE, decode_progress, encode_progress
from evalfleet.server.store.batch_records import (
    DONE,
    SUBMITTED,
    SUBMITTING,
    ProviderBatchRecord,
)
from evalfleet.v1 import coordinator_pb2 as cpb

QUEUED, RUNNING = cpb.EVALUATION_STATE_QUEUED, cpb.EVALUATION_STATE_RUNNING
SUCCEEDED, FAILED = cpb.EVALUATION_STATE_SUCCEEDED, cpb.EVALUATION_STATE_FAILED
CANCELLED = cpb.EVALUATION_STATE_CANCELLED
ACTIVE = (QUEUED, RUNNING)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    """A fresh, empty store of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("postgres_server").create_database()


def run(coro):
    return asyncio.run(coro)


def job(job_id: str, *, created: float | None = None, state: int = QUEUED, owner: str = "",
        lease_until: float = 0.0) -> JobRecord:
    t = time.time() if created is None else created
    return JobRecord(job_id, f"spec-{job_id}".encode(), state, "", t, t, owner=owner,
                     lease_until=lease_until)


# -- jobs ----------------------------------------------------------------------------------------

def test_create_get_list_and_put_jobs(store_url):
    async def scenario():
        async with open_store(store_url) as store:
            assert await store.create_job(job("a", created=100.0))
            assert not await store.create_job(job("a", created=999.0))  # id taken: untouched
            assert await store.create_job(job("b", created=200.0, state=SUCCEEDED))
            assert await store.create_job(job("c", created=300.0, owner="X", lease_until=5.0))
            got = await store.get_job("a")
            assert got == JobRecord("a", b"spec-a", QUEUED, "", 100.0, 100.0)
            assert await store.get_job("missing") is None
            assert [j.id for j in await store.list_jobs()] == ["c", "b", "a"]
            assert [j.id for j in await store.list_jobs(limit=2)] == ["c", "b"]
            assert [j.id for j in await store.list_jobs(states=[SUCCEEDED])] == ["b"]
            assert [j.id for j in await store.list_jobs(states=ACTIVE)] == ["c", "a"]
            c = await store.get_job("c")
            assert (c.owner, c.lease_until, c.attempts) == ("X", 5.0, 0)
            replaced = JobRecord("a", b"new", FAILED, "boom", 100.0, 150.0, "{}", b"r",
                                 owner="Y", lease_until=0.0, attempts=3)
            await store.put_job(replaced)  # upsert
            assert await store.get_job("a") == replaced
            await store.put_job(job("d", created=50.0))  # insert
            assert (await store.list_jobs())[-1].id == "d"

    run(scenario())


# -- leases and compare-and-set -------------------------------------------------------------------

def test_claim_renew_expire_and_take_over(store_url):
    async def scenario():
        async with open_store(store_url) as store:
            now = 1000.0
            await store.create_job(job("j", created=1.0))
            assert [j.id for j in await store.list_claimable(now)] == ["j"]  # nobody holds it
            a = await store.claim_job("j", "A", 30, now=now)
            assert (a.owner, a.lease_until, a.attempts, a.state) == ("A", 1030.0, 1, QUEUED)
            assert await store.claim_job("j", "B", 30, now=now + 10) is None  # lease live
            again = await store.claim_job("j", "A", 30, now=now + 10)  # holder: a renewal
            assert (again.lease_until, again.attempts) == (1040.0, 1)
            assert await store.renew_lease("j", "A", 30, now=now + 20)
            assert (await store.get_job("j")).lease_until == 1050.0
            assert not await store.renew_lease("j", "B", 30, now=now + 20)
            assert await store.list_claimable(now + 49) == []
            assert [j.id for j in await store.list_claimable(now + 50)] == ["j"]  # expired
            # A's lease lapsed but nobody claimed: A still holds the job.
            assert await store.transition("j", "A", [QUEUED], RUNNING) is not None
            b = await store.claim_job("j", "B", 30, now=now + 60)  # takeover
            assert (b.owner, b.lease_until, b.attempts, b.state) == ("B", 1090.0, 2, RUNNING)
            # From now on A is refused everywhere and writes nothing.
            assert not await store.renew_lease("j", "A", 30, now=now + 61)
            assert await store.transition("j", "A", ACTIVE, SUCCEEDED) is None
            assert not await store.put_results("j", "A", b"stale", "{}")
            assert not await store.put_samples("j", "A", [("t", "{}")])
            assert not await store.release("j", "A")
            current = await store.get_job("j")
            assert (current.state, current.owner, current.results) == (RUNNING, "B", None)
            done = await store.transition("j", "B", [RUNNING], SUCCEEDED)
            assert (done.state, done.owner, done.lease_until) == (SUCCEEDED, "B", 0.0)

    run(scenario())


def test_transition_is_compare_and_set(store_url):
    async def scenario():
        async with open_store(store_url) as store:
            await store.create_job(job("j", owner="A", lease_until=time.time() + 60))
            assert await store.transition("j", "A", [RUNNING], SUCCEEDED) is None  # not RUNNING
            assert await store.transition("j", "B", [QUEUED], RUNNING) is None  # not the owner
            assert await store.transition("missing", "A", [QUEUED], RUNNING) is None
            assert (await store.get_job("j")).state == QUEUED
            running = await store.transition("j", "A", [QUEUED], RUNNING)
            assert running.state == RUNNING and running.lease_until > 0  # lease kept
            failed = await store.transition("j", "A", ACTIVE, FAILED, error="worker died")
            assert (failed.state, failed.error, failed.lease_until) == (FAILED, "worker died", 0)
            assert failed.updated_at >= running.updated_at
            # A terminal job is nobody's to take, renew or change.
            for state in (RUNNING, SUCCEEDED, CANCELLED):
                assert await store.transition("j", "A", ACTIVE, state) is None
            assert await store.claim_job("j", "B", 30, now=time.time() + 1e6) is None
            assert await store.claim_next("B", 30, 5, now=time.time() + 1e6) == []
            assert not await store.renew_lease("j", "A", 30)
            assert not await store.put_results("j", "A", b"late", "{}")
            assert await store.list_claimable(time.time() + 1e6) == []
            with pytest.raises(ValueError, match="owner"):
                await store.transition("j", "", ACTIVE, RUNNING)

    run(scenario())


def test_cancel_job_whoever_holds_it(store_url):
    async def scenario():
        async with open_store(store_url) as store:
            await store.create_job(job("j", owner="A", lease_until=time.time() + 60))
            assert await store.transition("j", "A", [QUEUED], RUNNING) is not None
            cancelled = await store.cancel_job("j", "stopped by B")
            assert (cancelled.state, cancelled.error, cancelled.lease_until) == (
                CANCELLED, "stopped by B", 0)
            assert not await store.renew_lease("j", "A", 30)  # the holder learns it so
            assert await store.transition("j", "A", ACTIVE, SUCCEEDED) is None
            assert await store.cancel_job("j", "again") is None  # already finished
            assert await store.cancel_job("missing", "x") is None
            assert (await store.get_job("j")).error == "stopped by B"

    run(scenario())


def test_release_hands_the_job_over_at_once(store_url):
    async def scenario():
        async with open_store(store_url) as store:
            await store.create_job(job("j"))
            assert await store.claim_job("j", "A", 3600)
            await store.transition("j", "A", [QUEUED], RUNNING)
            assert not await store.release("j", "B")
            assert await store.release("j", "A")
            released = await store.get_job("j")
            assert (released.state, released.owner, released.lease_until) == (RUNNING, "", 0.0)
            assert [j.id for j in await store.list_claimable()] == ["j"]
            b = await store.claim_job("j", "B", 3600)
            assert (b.owner, b.attempts, b.state) == ("B", 2, RUNNING)

    run(scenario())


def test_lease_expiry_on_the_store_clock(store_url):
    """Without ``now`` the store's own clock decides: a 0.3 s lease is gone 0.6 s later."""
    async def scenario():
        async with open_store(store_url) as store:
            await store.create_job(job("j"))
            assert await store.claim_job("j", "A", 0.3)
            assert await store.claim_job("j", "B", 60) is None
            assert await store.list_claimable() == []
            await asyncio.sleep(0.6)
            assert [j.id for j in await store.list_claimable()] == ["j"]
            assert (await store.claim_job("j", "B", 60)).owner == "B"

    run(scenario())


def test_claim_next_takes_oldest_claimable_first(store_url):
    async def scenario():
        async with open_store(store_url) as store:
            now = 5000.0
            await store.create_job(job("new", created=3.0))
            await store.create_job(job("old", created=1.0))
            await store.create_job(job("held", created=0.5, owner="Z", lease_until=now + 100))
            await store.create_job(job("lapsed", created=2.0, owner="Z", lease_until=now - 1))
            await store.create_job(job("done", created=0.1, state=SUCCEEDED))
            first = await store.claim_next("A", 60, 2, now=now)
            assert [j.id for j in first] == ["old", "lapsed"]
            assert all(j.owner == "A" and j.lease_until == now + 60 for j in first)
            assert [j.attempts for j in first] == [1, 1]
            assert [j.id for j in await store.claim_next("B", 60, 10, now=now)] == ["new"]
            assert await store.claim_next("B", 60, 10, now=now) == []

    run(scenario())


def test_racing_owners_each_job_claimed_once(store_url):
    """Two stores on one file/database (two coordinators), eight claimers racing for the same
    40 jobs with claim_job, then for 40 more with claim_next: every job has exactly one winner."""
    async def scenario():
        async with open_store(store_url) as one, open_store(store_url) as two:
            for i in range(80):
                await one.create_job(job(f"j{i:02d}", created=float(i)))
            claimers = [(store, f"owner{k}") for k, store in enumerate([one, two] * 4)]

            async def by_id(store, owner):
                return [j.id for i in range(40)
                        if (j := await store.claim_job(f"j{i:02d}", owner, 600))]

            async def by_next(store, owner):
                won = []
                for _ in range(50):  # bounded: a broken store must fail, not hang
                    batch = await store.claim_next(owner, 600, 1)
                    if not batch:
                        break
                    won.extend(j.id for j in batch)
                return won

            won_by_id = await asyncio.gather(*(by_id(s, o) for s, o in claimers))
            won_next = await asyncio.gather(*(by_next(s, o) for s, o in claimers))
            for won, expected in ((won_by_id, 40), (won_next, 40)):
                flat = [j for w in won for j in w]
                assert len(flat) == len(set(flat)) == expected
            owners = {j.id: j.owner for j in await one.list_jobs()}
            for (_, owner), ids in zip(claimers, won_by_id + won_next, strict=False):
                assert all(owners[i] == owner for i in ids)
            assert all(j.attempts == 1 for j in await two.list_jobs())

    run(scenario())


_CLAIMER = """
import asyncio, json, os, sys, time
from evalfleet.server.store import open_store
async def main(url, owner, go):
    async with open_store(url) as store:
        await store.list_jobs(limit=1)
        open(go + "." + owner, "w").close()  # ready
        while not os.path.exists(go):
            await asyncio.sleep(0.005)
        won = []
        for _ in range(400):
            batch = await store.claim_next(owner, 600, 1)
            if not batch:
                break
            won.extend(j.id for j in batch)
        print(json.dumps(won))
asyncio.run(main(*sys.argv[1:]))
"""


def test_racing_processes_each_job_claimed_once(store_url, tmp_path):
    """Three coordinator processes claim from one store at once: no job is taken twice."""
    async def seed():
        async with open_store(store_url) as store:
            for i in range(300):
                await store.create_job(job(f"j{i:03d}", created=float(i)))

    run(seed())
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, store_url, f"p{k}", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(3)]
    deadline = time.time() + 120
    while not all((tmp_path / f"go.p{k}").exists() for k in range(3)):  # all ready, then go
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    go.touch()
    won = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        won.append(json.loads(out))
    flat = [j for w in won for j in w]
    assert len(flat) == len(set(flat)) == 300
    assert sum(1 for w in won if w) >= 2, [len(w) for w in won]  # they did race

    async def owners():
        async with open_store(store_url) as store:
            return {j.id: j.owner for j in await store.list_jobs()}

    stored = run(owners())
    for k, ids in enumerate(won):
        assert all(stored[i] == f"p{k}" for i in ids)


_WRITER = """
import asyncio, sys, time
from evalfleet.server.store import JobRecord, open_store
async def main(url):
    async with open_store(url) as store:
        now = time.time()
        await store.create_job(JobRecord("j", b"s", 1, "", now, now, owner="W",
                                         lease_until=now + 600))
        await store.transition("j", "W", [1], 2)
        for i in range(10_000):
            await store.put_answers("fp", [(f"{i:05d}-{k:03d}", bytes([i % 256, k % 256]))
                                           for k in range(200)])
            print(i, flush=True)
asyncio.run(main(sys.argv[1]))
"""


def test_what_was_committed_survives_kill_9(store_url):
    """A coordinator killed with SIGKILL loses nothing the store acknowledged."""
    import signal

    proc = subprocess.Popen([sys.executable, "-c", _WRITER, store_url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 5:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert acknowledged >= 5, proc.stderr.read()

    async def check():
        async with open_store(store_url) as store:
            ids = [f"{i:05d}-{k:03d}" for i in range(acknowledged + 1) for k in range(200)]
            got = await store.get_answers("fp", ids)
            assert len(got) == len(ids)
            assert got["00005-007"] == bytes([5, 7])
            assert await store.count_answers("fp") % 200 == 0  # batches are all or nothing
            job = await store.get_job("j")
            assert (job.state, job.owner) == (RUNNING, "W")
            # The dead owner's lease runs out; then another coordinator takes the job over.
            assert await store.claim_job("j", "X", 60) is None
            assert (await store.claim_job("j", "X", 60, now=time.time() + 601)).owner == "X"

    run(check())


# -- results ---------------------------------------------------------------------------------------

def test_results_are_stored_before_the_terminal_state(store_url):
    async def scenario():
        async with open_store(store_url) as store:
            await store.create_job(job("j", owner="A", lease_until=time.time() + 60))
            await store.transition("j", "A", [QUEUED], RUNNING)
            assert not await store.put_results("j", "B", b"x", "{}")
            assert await store.put_results("j", "A", b"\x00typed\xff", '{"results": {}}')
            mid = await store.get_job("j")
            assert (mid.state, mid.results, mid.results_json) == (
                RUNNING, b"\x00typed\xff", '{"results": {}}')
            # The terminal transition keeps them (it only writes results it is given).
            done = await store.transition("j", "A", [RUNNING], SUCCEEDED)
            assert (done.results, done.results_json) == (b"\x00typed\xff", '{"results": {}}')

            # Or both in one transaction: a SUCCEEDED job always has its results.
            await store.create_job(job("k", owner="A", lease_until=time.time() + 60))
            done = await store.transition("k", "A", ACTIVE, SUCCEEDED, results=b"r",
                                          results_json='{"k": 1}')
            assert (done.state, done.results, done.results_json) == (SUCCEEDED, b"r", '{"k": 1}')
            refused = await store.transition("k", "A", ACTIVE, SUCCEEDED, results=b"other")
            assert refused is None and (await store.get_job("k")).results == b"r"

    run(scenario())


# -- samples ---------------------------------------------------------------------------------------

def test_samples_replace_page_and_filter(store_url):
    async def scenario():
        async with open_store(store_url) as store:
            await store.create_job(job("j", owner="A", lease_until=time.time() + 60))
            await store.create_job(job("other", owner="A", lease_until=time.time() + 60))
            rows = [("arc" if i % 3 else "piqa", json.dumps({"doc_id": i, "text": "é\n\t\"x\\"}))
                    for i in range(SAMPLES_PAGE + 500)]
            assert await store.put_samples("j", "A", rows)
            assert await store.put_samples("other", "A", [("arc", "{}")])
            got = [r async for r in store.iter_samples("j")]
            assert got == rows  # order kept across pages, text byte for byte
            piqa = [r async for r in store.iter_samples("j", tasks=["piqa"])]
            assert piqa == [r for r in rows if r[0] == "piqa"]
            assert [r async for r in store.iter_samples("j", tasks=["nope"])] == []
            assert await store.put_samples("j", "A", [("t", "1"), ("t", "2")])  # replaced
            assert [r async for r in store.iter_samples("j")] == [("t", "1"), ("t", "2")]
            assert not await store.put_samples("j", "B", [("t", "3")])
            assert [r async for r in store.iter_samples("missing")] == []
            assert [r async for r in store.iter_samples("other")] == [("arc", "{}")]

    run(scenario())


# -- answers ---------------------------------------------------------------------------------------

def test_answers_are_shared_by_every_job_on_a_model(store_url):
    async def scenario():
        async with open_store(store_url) as store, open_store(store_url) as other:
            fp, fp2 = "sha256:" + "a" * 64, "sha256:" + "b" * 64
            assert not await store.has_answers(fp)
            assert await store.put_answers(fp, [("r1", b"one"), ("r2", b"\x00two")]) == 2
            assert await other.has_answers(fp) and not await other.has_answers(fp2)
            # Another coordinator (or job) asks for the same requests: answered from the table.
            assert await other.get_answers(fp, ["r2", "r1", "r3"]) == {
                "r1": b"one", "r2": b"\x00two"}
            # First answer wins; only new ones count.
            assert await other.put_answers(fp, [("r1", b"changed"), ("r3", b"three"),
                                                ("r3", b"dup")]) == 1
            assert await store.get_answers(fp, ["r1", "r3"]) == {"r1": b"one", "r3": b"three"}
            assert await store.get_answers(fp2, ["r1"]) == {}  # another model
            assert await store.count_answers(fp) == 3 and await store.count_answers(fp2) == 0
            assert await store.put_answers(fp, []) == 0 and await store.get_answers(fp, []) == {}
            # Batches beyond one statement's chunk.
            many = [(f"{i:064x}", i.to_bytes(4, "little")) for i in range(45_000)]
            assert await store.put_answers(fp2, many) == 45_000
            got = await other.get_answers(fp2, [rid for rid, _ in many[::-1]] + ["nope"])
            assert got == dict(many)

    run(scenario())


def test_concurrent_overlapping_answer_writes(store_url):
    """Coordinators writing overlapping batches at once neither fail nor duplicate."""
    async def scenario():
        async with open_store(store_url) as one, open_store(store_url) as two:
            fp = "fp"
            batches = [[(f"{(k * 700 + i) % 3000:05d}", b"x") for i in range(1500)][::(-1) ** k]
                       for k in range(8)]
            added = await asyncio.gather(*((one if k % 2 else two).put_answers(fp, b)
                                           for k, b in enumerate(batches)))
            distinct = {rid for b in batches for rid, _ in b}
            assert sum(added) == len(distinct) == await one.count_answers(fp)

    run(scenario())


def _slices(pairs: list[tuple[str, bytes]], gap: bytes = b"\x0a\x07") -> AnswerSlices:
    """``pairs`` as spans of one buffer, with bytes between them (as in a response)."""
    raw, starts, ends = b"", [], []
    for _, answer in pairs:
        raw += gap
        starts.append(len(raw))
        raw += answer
        ends.append(len(raw))
    return AnswerSlices([rid for rid, _ in pairs], raw + gap, np.array(starts, np.int64),
                        np.array(ends, np.int64))


def test_answer_slices_are_stored_as_their_pairs(store_url):
    """A batch's answers written as spans of its response (content ids and other ids, batches
    written at once and grouped) read back as written; the first answer still wins."""
    async def scenario():
        async with open_store(store_url) as store, open_store(store_url) as other:
            fp = "sha256:" + "c" * 64
            content = [(hashlib.sha256(str(i).encode()).hexdigest(), f"a{i}".encode() * (i % 5))
                       for i in range(3000)]
            batches = [content[k::7] for k in range(7)]
            await asyncio.gather(*(store.put_answer_slices(fp, _slices(b)) for b in batches))
            assert await other.get_answers(fp, [rid for rid, _ in content]) == dict(content)
            # Other ids (keys of several widths), a repeat, and an answer already stored.
            mixed = [("r1", b"one"), ("AB" * 32, b"upper"), (content[0][0] + "#1", b"rep"),
                     (content[1][0], b"changed")]
            await other.put_answer_slices(fp, _slices(mixed))
            await other.put_answer_slices(fp, _slices([]))
            got = await store.get_answers(fp, [rid for rid, _ in mixed])
            assert got == {**dict(mixed[:3]), content[1][0]: content[1][1]}
            assert await store.count_answers(fp) == 3003

    run(scenario())


def test_sqlite_close_waits_for_answer_writes(tmp_path):
    """Answers handed to the store before it closes are on disk when it has closed."""
    pairs = [(hashlib.sha256(str(i).encode()).hexdigest(), b"x%d" % i) for i in range(500)]

    async def write():
        store = SqliteJobStore(tmp_path / "s.db")
        await store.open()
        writes = [asyncio.ensure_future(store.put_answer_slices("fp", _slices(pairs[k::5])))
                  for k in range(5)]
        await asyncio.sleep(0)  # the writes are under way, none awaited
        await store.close()
        await asyncio.gather(*writes)
        with pytest.raises(StoreUnavailableError, match="closed"):
            await store.put_answer_slices("fp", _slices(pairs[:1]))

    async def read():
        async with SqliteJobStore(tmp_path / "s.db") as store:
            return await store.get_answers("fp", [rid for rid, _ in pairs])

    run(write())
    assert run(read()) == dict(pairs)


def test_sqlite_answer_writers_are_told_when_the_grouped_write_is_cancelled(tmp_path):
    """Batches waiting for a grouped write that is cancelled (the loop shutting down) get an
    error instead of waiting for ever."""
    pairs = [(hashlib.sha256(str(i).encode()).hexdigest(), b"x") for i in range(10)]

    async def scenario():
        async with SqliteJobStore(tmp_path / "s.db") as store:
            stuck = asyncio.Event()

            async def never(fn, *args):
                await stuck.wait()

            store._run = never
            first = asyncio.ensure_future(store.put_answer_slices("fp", _slices(pairs[:5])))
            await asyncio.sleep(0)  # the grouped write has started and waits
            second = asyncio.ensure_future(store.put_answer_slices("fp2", _slices(pairs[5:])))
            await asyncio.sleep(0)
            store._slice_writer.cancel()
            for waiting in (first, second):
                with pytest.raises(StoreUnavailableError, match="interrupted"):
                    await asyncio.wait_for(waiting, 5)
            del store._run

    run(scenario())


# -- opening, persistence, schema ---------------------------------------------------------------

def test_reopened_store_keeps_everything(store_url):
    async def write():
        async with open_store(store_url) as store:
            await store.create_job(job("j", owner="A", lease_until=time.time() + 60))
            await store.put_answers("fp", [("r", b"a")])
            await store.put_results("j", "A", b"r", "{}")
            await store.transition("j", "A", ACTIVE, SUCCEEDED)

    async def read():
        async with open_store(store_url) as store:
            return await store.get_job("j"), await store.get_answers("fp", ["r"])

    run(write())
    got, answers = run(read())  # migrations already applied: they run no second time
    assert (got.state, got.results, answers) == (SUCCEEDED, b"r", {"r": b"a"})


def _progress(done: int, total: int = 40, unique: int = 0) -> bytes:
    return encode_progress([cpb.TaskProgress(task="arc_easy", done=done, total=total,
                                             docs_total=10, docs_done=done // 4,
                                             group="ai2_arc")], unique)


def test_progress_is_stored_with_the_lease_renewal_and_the_end(store_url):
    """A job's progress rides on its holder's lease renewals (the same write) and on its
    terminal transition; only the holder writes it, and None keeps what is stored."""
    async def scenario():
        async with open_store(store_url) as store:
            await store.create_job(job("j"))
            assert (await store.get_job("j")).progress is None
            assert await store.claim_job("j", "A", 60)
            assert await store.renew_lease("j", "A", 60, progress=_progress(8, unique=37))
            stored = (await store.get_job("j")).progress
            assert decode_progress(stored) == cpb.Evaluation(
                progress=[cpb.TaskProgress(task="arc_easy", done=8, total=40, docs_total=10,
                                           docs_done=2, group="ai2_arc")], unique_requests=37)
            assert await store.renew_lease("j", "A", 60)  # no progress given: kept
            assert (await store.get_job("j")).progress == stored
            assert not await store.renew_lease("j", "B", 60, progress=_progress(39))
            assert await store.transition("j", "A", [QUEUED], RUNNING) is not None
            assert (await store.get_job("j")).progress == stored  # kept
            assert await store.transition("j", "B", ACTIVE, SUCCEEDED,
                                          progress=_progress(39)) is None
            assert (await store.get_job("j")).progress == stored  # refused: nothing written
            # B takes over (A's lease lapsed): its progress is the one stored from now on.
            taken = await store.claim_job("j", "B", 60, now=time.time() + 1000)
            assert taken.progress == stored
            assert not await store.renew_lease("j", "A", 60, progress=_progress(12))
            assert await store.renew_lease("j", "B", 60, progress=_progress(20))
            done = await store.transition("j", "B", ACTIVE, SUCCEEDED,
                                          progress=_progress(40))
            assert done.progress == _progress(40) == (await store.get_job("j")).progress
            [listed] = await store.list_jobs()
            assert listed.progress == _progress(40)
            # A record with progress round-trips through put_job.
            await store.put_job(job("k"))
            copy = await store.get_job("j")
            copy.id = "k"
            await store.put_job(copy)
            assert await store.get_job("k") == copy

    run(scenario())


def test_provider_batch_records_are_written_updated_and_kept(store_url):
    """A batch_api job's chunk records: written before submission (no batch id), given the
    provider's id and states after, one per (job, chunk), listed oldest first, kept when the
    store is reopened (a restarted coordinator resumes from them)."""
    first = ProviderBatchRecord("j1", "generate_until-0000", "generate_until", ["r1", "r2"],
                                "tag-0", created_at=10.0)
    resend = ProviderBatchRecord("j1", "generate_until-0000-a2", "generate_until", ["r2"],
                                 "tag-1", attempt=2, created_at=20.0)

    async def write():
        async with open_store(store_url) as store:
            assert await store.list_provider_batches("j1") == []
            assert await store.add_provider_batch(resend)
            assert await store.add_provider_batch(first)
            assert not await store.add_provider_batch(  # the chunk is taken: untouched
                ProviderBatchRecord("j1", first.chunk, "loglikelihood", ["x"], "other"))
            assert await store.add_provider_batch(ProviderBatchRecord(
                "j2", first.chunk, "loglikelihood", ["x"], "t"))  # another job's chunk
            assert await store.update_provider_batch("j1", first.chunk, batch_id="batch_1",
                                                     state=SUBMITTED)
            assert await store.update_provider_batch("j1", first.chunk, state=DONE)
            assert not await store.update_provider_batch("j1", "missing", state=DONE)
            with pytest.raises(ValueError, match="provider batch state"):
                await store.update_provider_batch("j1", first.chunk, state="bogus")

    async def read() -> list[ProviderBatchRecord]:
        async with open_store(store_url) as store:
            return await store.list_provider_batches("j1")

    run(write())
    got = run(read())
    assert [(r.chunk, r.kind, r.request_ids, r.tag, r.batch_id, r.state, r.attempt)
            for r in got] == [
        (first.chunk, "generate_until", ["r1", "r2"], "tag-0", "batch_1", DONE, 1),
        (resend.chunk, "generate_until", ["r2"], "tag-1", "", SUBMITTING, 2)]
    assert got[0].created_at == 10.0 and got[0].updated_at > 10.0
    assert got[1].updated_at > 20.0  # set by the store when not given


def test_progress_decodes_to_nothing_for_none_or_unreadable_bytes():
    assert decode_progress(None) == cpb.Evaluation()
    assert decode_progress(b"") == cpb.Evaluation()
    assert decode_progress(b"\xff\xff\xff") == cpb.Evaluation()
    assert list(decode_progress(_progress(5)).progress)[0].done == 5


def test_store_of_the_previous_schema_gains_the_progress_column(store_url):
    """A store written before progress was kept (SQLite schema 3, PostgreSQL schema 1) is
    migrated on open: its jobs answer no progress, and progress is stored from then on."""
    run(open_store(store_url).open())
    now = time.time()
    if store_url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE evalfleet.jobs DROP COLUMN progress")
            conn.execute("DROP TABLE evalfleet.provider_batches")
            conn.execute("DELETE FROM evalfleet.schema_version WHERE version >= 2")
            conn.execute("INSERT INTO evalfleet.jobs (id, spec, state, error, created_at, "
                         "updated_at, owner, lease_until, attempts) VALUES "
                         "('old', '\\x00', 2, '', %s, %s, 'A', %s, 1)", (now, now, now + 60))
    else:
        with sqlite3.connect(store_url) as conn:
            conn.execute("ALTER TABLE jobs DROP COLUMN progress")
            conn.execute("DROP TABLE provider_batches")
            conn.execute("DELETE FROM schema_version WHERE version >= 4")
            conn.execute("INSERT INTO jobs (id, spec, state, error, created_at, updated_at, "
                         "owner, lease_until, attempts) VALUES "
                         "('old', x'00', 2, '', ?, ?, 'A', ?, 1)", (now, now, now + 60))

    async def scenario():
        async with open_store(store_url) as store:
            old = await store.get_job("old")
            assert (old.state, old.owner, old.attempts, old.progress) == (RUNNING, "A", 1, None)
            assert await store.renew_lease("old", "A", 60, progress=_progress(3))
            assert (await store.get_job("old")).progress == _progress(3)
            assert await store.list_provider_batches("old") == []  # and batch records

    run(scenario())
    run(_reopen_keeps_progress(store_url))


async def _reopen_keeps_progress(store_url: str) -> None:
    async with open_store(store_url) as store:  # migrated once: a second open changes nothing
        assert (await store.get_job("old")).progress == _progress(3)


def test_store_from_a_newer_evalfleet_is_refused(store_url):
    run(open_store(store_url).open())
    if store_url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("INSERT INTO evalfleet.schema_version (version) VALUES (999)")
    else:
        with sqlite3.connect(store_url) as conn:
            conn.execute("INSERT INTO schema_version VALUES (999, 0)")
    with pytest.raises(StoreSchemaError, match="schema version 999.*upgrade evalfleet"):
        run(open_store(store_url).open())


def test_sqlite_file_of_the_first_layout_is_migrated(tmp_path):
    """Files written before leases existed open unchanged, their jobs unowned."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE jobs (id TEXT PRIMARY KEY, spec BLOB NOT NULL, state INTEGER NOT NULL,
              error TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
              results BLOB, results_json TEXT);
            CREATE TABLE answers (fingerprint TEXT NOT NULL, request_id TEXT NOT NULL,
              answer BLOB NOT NULL, PRIMARY KEY (fingerprint, request_id)) WITHOUT ROWID;
            CREATE TABLE samples (job_id TEXT NOT NULL, seq INTEGER NOT NULL, task TEXT NOT NULL,
              record TEXT NOT NULL, PRIMARY KEY (job_id, seq)) WITHOUT ROWID;
            INSERT INTO jobs VALUES ('old', x'00', 2, '', 1.0, 2.0, NULL, NULL);
            INSERT INTO answers VALUES ('fp', 'r', x'01');
        """)
        # Content ids (and the repeats of a sampled request) as every layout before 3 kept them.
        conn.executemany("INSERT INTO answers VALUES (?, ?, ?)",
                         [("fp", "ab" * 32, b"\x02"), ("fp", "ab" * 32 + "#1", b"\x03"),
                          ("fp2", "AB" * 32, b"\x04")])

    async def scenario():
        async with SqliteJobStore(path) as store:
            old = await store.get_job("old")
            assert (old.state, old.owner, old.lease_until, old.attempts) == (RUNNING, "", 0, 0)
            assert old.progress is None  # stored before progress was kept
            assert await store.get_answers("fp", ["r"]) == {"r": b"\x01"}
            assert await store.get_answers("fp", ["ab" * 32, "ab" * 32 + "#1", "AB" * 32]) == {
                "ab" * 32: b"\x02", "ab" * 32 + "#1": b"\x03"}
            assert await store.get_answers("fp2", ["AB" * 32, "ab" * 32]) == {"AB" * 32: b"\x04"}
            assert await store.count_answers("fp") == 3 and await store.has_answers("fp2")
            assert [j.id for j in await store.list_claimable()] == ["old"]
            assert (await store.claim_job("old", "A", 60)).owner == "A"

    run(scenario())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [v for (v,) in conn.execute("SELECT version FROM schema_version")] == [
            1, 2, 3, 4, 5]


def test_sqlite_request_keys_are_compact_and_one_to_one():
    """Content ids take 33 bytes; no two ids share a key (upper case, spaces, short ids)."""
    from evalfleet.server.store.sqlite import request_key

    content = "0f" * 32
    ids = [content, content + "#0", content + "#12", content.upper(), "r1", "", "0f" * 31,
           "0f " * 21 + "0", "x" * 64, "0f" * 33]
    keys = [request_key(i) for i in ids]
    assert len(set(keys)) == len(ids)
    assert len(keys[0]) == 33 and keys[1] == keys[0] + b"#0"
    assert keys[3] == b"\x00" + content.upper().encode()  # not lowercase hex: kept as text


@pytest.mark.parametrize("ids", [
    ["0f" * 32, "a1" * 32, "9" * 64],  # content ids: converted in one call
    ["0f" * 32, "0F" * 32], ["0f" * 32, "0f " * 21 + "0"], ["0f" * 32, "0f" * 31 + "\u00e9a"],
    ["x" * 64, "y" * 64], ["0f" * 32 + "#1", "0f" * 32 + "#2"], ["0f" * 32, "0f" * 32 + "#1"],
])
def test_sqlite_packed_request_keys_are_the_request_keys(ids):
    """The one-call conversion gives each id's request_key, or None when widths differ."""
    from evalfleet.server.store.sqlite import packed_request_keys, request_key

    keys = [request_key(i) for i in ids]
    widths = {len(k) for k in keys}
    expected = (b"".join(keys), widths.pop()) if len(widths) == 1 else None
    assert packed_request_keys(ids) == expected


def test_sqlite_store_runs_off_the_event_loop(tmp_path):
    """The connection lives on the store's own thread: the loop's thread cannot even use it."""
    async def scenario():
        store = SqliteJobStore(tmp_path / "s.db")
        await store.open()
        with pytest.raises(sqlite3.ProgrammingError, match="thread"):
            store._conn.execute("SELECT 1")
        await store.close()
        with pytest.raises(StoreUnavailableError, match="closed"):
            await store.get_job("x")

    run(scenario())


def test_open_store_accepts_the_documented_forms(tmp_path):
    assert open_store(":memory:").path == ":memory:"
    assert open_store(str(tmp_path / "a.db")).path == str(tmp_path / "a.db")
    assert open_store("sqlite:///rel/b.db").path == "rel/b.db"
    assert open_store(f"sqlite:///{tmp_path}/c.db").path == f"{tmp_path}/c.db"
    assert open_store("sqlite:///:memory:").path == ":memory:"
    for url in ("postgresql://u:secret@db.example:5432/evals", "postgres://u@h/d"):
        store = open_store(url)
        assert isinstance(store, PostgresJobStore) and store.url == url
    assert "secret" not in open_store("postgresql://u:secret@h/d").address
    for bad, needle in (("mysql://u:pw@h/d", "scheme 'mysql'"), ("", "empty"),
                        ("sqlite://", "names no file")):
        with pytest.raises(InvalidArgumentError) as err:
            open_store(bad)
        assert err.value.message.startswith("--store")
        assert needle in err.value.message and "pw" not in err.value.message
    with pytest.raises(InvalidArgumentError, match="postgresql://"):
        open_store("redis://h")


def test_unreachable_postgres_names_the_store_without_its_password():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = PostgresJobStore(f"postgresql://u:hunter2@127.0.0.1:{port}/evals",
                             connect_timeout_s=5)
    with pytest.raises(StoreUnavailableError) as err:
        run(store.open())
    assert f"127.0.0.1:{port}/evals" in err.value.message
    assert "hunter2" not in err.value.message and "cannot connect" in err.value.message


def test_unwritable_sqlite_path_is_a_clear_error(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(StoreUnavailableError, match="cannot open"):
        run(SqliteJobStore(blocked / "store.db").open())
    not_sqlite = tmp_path / "text.db"
    not_sqlite.write_text("hello, this is not a database" * 100)
    with pytest.raises(StoreUnavailableError, match="not a usable evalfleet SQLite store"):
        run(SqliteJobStore(not_sqlite).open())



_CHECKED_WRITER = """
import asyncio, sys
from evalfleet.server.store import SqliteJobStore
from evalfleet.server.store.batch_records import ProviderBatchRecord

async def main():
    async with SqliteJobStore(sys.argv[1]) as store:
        await store.add_provider_batch(ProviderBatchRecord("j", "c", "generate_until", ["r"], "t"))
        assert await store.write_problem() is None  # the health check every few seconds
        print("ready", flush=True)
        sys.stdin.readline()  # meanwhile another process opens and closes the file
        await store.update_provider_batch("j", "c", batch_id="b1", state="submitted")
        print("written", flush=True)
        sys.stdin.readline()

asyncio.run(main())
"""


def test_sqlite_writes_stay_visible_to_other_processes_after_a_health_check(tmp_path):
    """The store's writability check used to open and close its files, which dropped SQLite's
    POSIX locks in that process: a connection of another process that closed then deleted the
    WAL the store still wrote to, and every later commit was lost (a coordinator's batch id,
    its lease renewals). Now another process sees what the store writes after the check."""
    path = tmp_path / "store.db"
    writer = subprocess.Popen([sys.executable, "-c", _CHECKED_WRITER, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        reader = sqlite3.connect(path)
        reader.execute("SELECT COUNT(*) FROM provider_batches").fetchall()
        reader.close()
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "written"
        with contextlib.closing(sqlite3.connect(path)) as reader:
            assert reader.execute("SELECT batch_id, state FROM provider_batches").fetchall() == [
                ("b1", "submitted")]
        assert Path(str(path) + "-wal").exists()
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
