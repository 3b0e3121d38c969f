"""Ctrl-C on ``evalfleet eval`` (``client/interrupt.py``): the first stops the run within 2 s,
its worker cutting the batch in flight short (``Backend.interrupt``), and keeps every answer
computed, which the same command then reuses; a second quits at once, the worker with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from conftest import REPO_ROOT, answers
from test_embedded_worker import ENV, _alive, _start_until_serving, _wait_gone

from evalfleet.inference.backends.base import (
    CANCELLED,
    GenerationParams,
    GenerationRequest,
    TokenScores,
)
from evalfleet.server.registry import DOWN, READY, Worker, WorkerRegistry
from evalfleet.server.scheduler import JobDispatch, Scheduler, SchedulerConfig
from evalfleet.server.workers import WorkItem
from evalfleet.v1 import inference_pb2 as ipb


def _stored(db: Path) -> int:
    """Answers in the SQLite store ``db`` (0 before it has its tables)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        try:
            return c.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0


def _until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the command ended early ({proc.returncode})"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _argv(model_dir: Path, store: Path, *extra: str) -> list[str]:
    """The tiny model without prefix sharing, one request per forward: a batch of the embedded
    run (~10 s of work, up to 512 requests) is hundreds of forwards."""
    return ["eval", "--model", "hf", "--model_args",
            f"pretrained={model_dir},dtype=float32,prefix_sharing=False", "--batch_size", "1",
            "--device", "cpu", "--store", str(store), "--no_progress", "--tasks", "arc_easy",
            *extra]


def _spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evalfleet.client.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=REPO_ROOT)


def _kill(proc: subprocess.Popen, pid: int | None = None) -> None:
    proc.kill()
    proc.wait()
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _worker_pid(pid: int) -> int | None:
    """The embedded worker's process among the children of ``pid``, once started."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            if b"evalfleet.inference.embedded" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def _batches(log: str) -> list[tuple[int, int]]:
    """(requests, cancelled) of each batch the worker answered, from its ``batch_done`` log."""
    out = []
    for line in log.splitlines():
        if "batch_done" in line:
            items = re.search(r"\bitems\W+(\d+)", line)
            failed = re.search(r"\bfailed\W+(\d+)", line)
            assert items and failed, line
            out.append((int(items.group(1)), int(failed.group(1))))
    return out


def test_ctrl_c_stops_within_2_s_and_the_rerun_reuses_every_answer_computed(
        tiny_model_dir, tmp_path):
    """Interrupted while its second batch computes, the command ends within 2 s; the worker
    answered that batch's finished requests (cancelling the rest) and they are stored with the
    first batch's; the rerun reports exactly that many answers from the store."""
    db = tmp_path / "answers.db"
    argv = _argv(tiny_model_dir, db, "--limit", "200", "--log_level", "INFO")
    proc, pid, _ = _start_until_serving(argv)
    try:
        _until(lambda: _stored(db) > 0, proc, 60)  # the first batch (16 requests) is stored
        time.sleep(0.5)  # the second computes
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # stderr ends once the worker has ended too
        took = time.monotonic() - sent
    finally:
        _kill(proc, pid)
    assert proc.returncode == 130, err
    kept = re.search(r"interrupted: stopped; (\d+) of (\d+) answers stored in the store "
                     rf"{re.escape(str(db))}; rerun the same command to resume", err)
    assert kept, err
    stored, total = int(kept.group(1)), int(kept.group(2))
    batches = _batches(err)
    # A batch cut short: part answered, the rest cancelled; every answer the worker sent is
    # stored, more than its whole batches hold.
    assert any(0 < cancelled < items for items, cancelled in batches), batches
    assert stored == sum(items - cancelled for items, cancelled in batches) == _stored(db)
    assert stored > sum(items for items, cancelled in batches if not cancelled)
    assert took < 2.0, f"stopped in {took:.2f} s"
    assert not _alive(pid)
    assert "Traceback" not in err

    rerun = _spawn(argv)
    try:
        assert rerun.stderr is not None
        report = next((line for line in rerun.stderr if "answers from the store" in line), "")
        rerun.send_signal(signal.SIGINT)  # what it reuses is all this test needs
        rerun.communicate(timeout=30)
    finally:
        _kill(rerun)
    assert f"{stored} answers from the store, {total - stored} to compute" in report, report


def test_a_second_ctrl_c_quits_at_once_and_ends_the_worker(tiny_model_dir, tmp_path):
    """The first Ctrl-C's clean-up waits for the worker (frozen here, so it cannot end); the
    second ends the command at once and kills the worker. (Sent once the embedded services are
    up: a first Ctrl-C while the worker is still starting kills it at once, so there would be
    nothing to wait for.)"""
    proc = _spawn(_argv(tiny_model_dir, tmp_path / "answers.db", "--limit", "200"))
    pid = None
    try:
        assert proc.stderr is not None
        early = []
        for line in proc.stderr:  # "embedded coordinator ..., worker ... (pid N), store ..."
            early.append(line)
            if line.startswith("embedded coordinator"):
                break
        assert early and early[-1].startswith("embedded coordinator"), "".join(early)
        pid = _worker_pid(proc.pid)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None  # still cleaning up: waiting for the worker
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
        gone = _wait_gone(pid, 1.0)
    finally:
        _kill(proc, pid)
    assert proc.returncode == 130, err
    assert "interrupted again: quitting now" in err
    assert took < 1.0, f"quit in {took:.2f} s"
    assert gone, "the worker outlived the command"


def test_an_interrupt_ends_the_forward_in_progress_and_answers_what_finished(tiny_model_dir):
    """Interrupted inside its third forward, a batch ends before the next decoder layer: the
    two requests of the finished forwards are answered (as without the interrupt), the rest
    are CANCELLED; later batches, generation too, run no forward."""
    from evalfleet.inference.backends.hf import HFBackend

    backend = HFBackend.from_model_args(  # its own model: an interrupt stays on the model
        {"pretrained": str(tiny_model_dir), "device": "cpu", "prefix_sharing": False},
        batch_size=1)
    requests = [(f"Question {i}: which{' one' * i}?", " A") for i in range(5)]  # 5 forwards
    whole = answers(backend.loglikelihood(requests))
    inner = backend.model.model
    embedded, attended = [], []

    def embedding(*_) -> None:  # the interrupt arrives inside the third forward
        embedded.append(1)
        if len(embedded) == 3:
            backend.interrupt()

    inner.embed_tokens.register_forward_pre_hook(embedding)
    inner.layers[0].self_attn.register_forward_pre_hook(lambda *_: attended.append(1) and None)

    cut = asyncio.run(backend.loglikelihood(requests))
    assert len(embedded) == 3 and len(attended) == 2  # the third forward ran no layer
    finished = [i for i, r in enumerate(cut.results) if isinstance(r, TokenScores)]
    assert len(finished) == 2
    assert [r for r in cut.results if not isinstance(r, TokenScores)] == [CANCELLED] * 3
    for i in finished:
        np.testing.assert_array_equal(cut.results[i].logprobs, whole[i].logprobs)
    assert answers(backend.loglikelihood(requests[:2])) == [CANCELLED] * 2
    generated = answers(backend.generate_until(
        [GenerationRequest("Question: 1 + 1?", GenerationParams(until=["\n"], max_gen_toks=4))]))
    assert generated == [CANCELLED] and len(attended) == 2


def test_requests_a_stopping_worker_cancelled_are_asked_again_without_counting_a_try():
    """A batch's cancelled requests (its worker stops) are requeued, not failed, even with one
    try per request; its answered ones are stored, and the worker is out until it is healthy."""
    async def main() -> None:
        registry = WorkerRegistry()
        worker = Worker("w:1", "static", client=None)
        worker.info = ipb.ModelInfo(backend="sim", model_name="m", fingerprint="sha256:m",
                                    capabilities=ipb.Capabilities(loglikelihood=True,
                                                                  max_concurrent_batches=1))
        worker.state = READY
        registry.workers[worker.address] = worker
        config = SchedulerConfig(max_attempts=1)  # a counted try would fail the job
        scheduler = Scheduler(registry, config)
        items = [WorkItem(f"{i:064x}", "loglikelihood", (f"q{i}", " A")) for i in range(4)]
        stored: list[int] = []

        async def on_answers(queue, indices, *_):
            stored.extend(indices.tolist())

        job = JobDispatch.build("job", ("sim", "sha256:m"), items, on_answers, config=config)
        scheduler.speed.record(worker, job, "loglikelihood", 100, 0.001)
        batch, _ = scheduler._take(worker, job)
        ids = [i.request_id for i in ipb.LoglikelihoodRequest.FromString(batch.payload).items]
        cancelled = ipb.ItemError(message="cancelled", retryable=True, cancelled=True)
        response = ipb.LoglikelihoodResponse(results=[
            ipb.TokenScores(request_id=ids[0], logprobs=[-1.0], greedy=[True]),
            *[ipb.TokenScores(request_id=rid, error=cancelled) for rid in ids[1:]]])
        await scheduler.outcomes.batch_answered(worker, job, batch,
                                                response.SerializeToString(), 0.1)
        assert stored == [0] and job.answered == 1
        assert not job.finished.done()  # not failed
        assert job.pending == 3 and batch.queue.attempts.tolist() == [0, 0, 0, 0]
        assert worker.state == DOWN
        await scheduler.close()

    asyncio.run(main())


def test_ctrl_c_cancels_the_command_once_and_leaves_an_ignored_sigint_ignored():
    """The first SIGINT cancels the command's task (its clean-up runs), which then reports
    itself stopped; a SIGINT ignored by whoever started the command (a shell's background job,
    nohup) stays ignored, as the interpreter itself leaves it."""
    from evalfleet.client.interrupt import CtrlC

    async def command() -> tuple[bool, bool]:
        with CtrlC() as ctrl_c:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                return ctrl_c.stopped(), asyncio.current_task().cancelling() == 0
        return False, False

    previous = signal.getsignal(signal.SIGINT)
    assert asyncio.run(command()) == (True, True)
    assert signal.getsignal(signal.SIGINT) is previous
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        async def ignoring() -> object:
            with CtrlC():
                return signal.getsignal(signal.SIGINT)

        assert asyncio.run(ignoring()) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
