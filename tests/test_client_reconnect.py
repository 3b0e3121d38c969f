"""``eval --coordinator`` following a job across a broken stream (unit level, a scripted stub;
``tests/test_coordinator_crash.py`` does it with a real coordinator killed and restarted):
the client reconnects, skips the history the coordinator replays, and gives up, naming the
coordinator, only after its patience."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from rich.console import Console

from evalfleet.client import submit
from evalfleet.common.security import ClientSecurity
from evalfleet.v1 import coordinator_pb2 as cpb


def _event(message: str, seconds: int, state=cpb.EVALUATION_STATE_RUNNING):
    event = cpb.EvaluationEvent(id="job1", state=state, message=message)
    event.time.seconds = seconds
    return event


def _unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                grpc.aio.Metadata(), details="Socket closed")


class ScriptedStub:
    """WatchEvaluation plays one script per call: events, then an error or the end."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.calls = 0

    def WatchEvaluation(self, request, metadata=()):  # noqa: N802 - the gRPC method's name
        script = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1

        async def stream():
            for item in script:
                if isinstance(item, Exception):
                    raise item
                yield item
        return stream()


def _connection(stub, console, patience_s=30.0):
    conn = submit.Connection("127.0.0.1:1", ClientSecurity(), console, patience_s)
    conn._stub = stub  # the scripted coordinator instead of a channel
    conn.close = _reattach(conn, stub)
    return conn


def _reattach(conn, stub):
    async def close():
        conn._stub = stub
    return close


def test_follow_survives_a_broken_stream_without_repeating_history(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    running = _event("running", 1)
    report = _event("0 answers from the store, 10 to compute", 2)
    stub = ScriptedStub([
        [running, report, _unavailable()],
        [_unavailable()],  # still down
        [running, report, _event("batch of 10 done", 3),  # replayed history, then new
         _event("succeeded", 4, cpb.EVALUATION_STATE_SUCCEEDED)],
    ])
    out = io.StringIO()
    console = Console(file=out, width=300)
    last = asyncio.run(submit._follow(_connection(stub, console),
                                      cpb.Evaluation(id="job1"), console, False))
    assert last.state == cpb.EVALUATION_STATE_SUCCEEDED
    assert stub.calls == 3
    text = out.getvalue()
    assert text.count("0 answers from the store, 10 to compute") == 1  # not printed twice
    assert text.count("reconnecting") == 2 and "reconnected to coordinator" in text


def test_follow_gives_up_after_its_patience(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    clock = iter(range(0, 10_000, 10))
    stub = ScriptedStub([[_unavailable()]])
    console = Console(file=io.StringIO(), width=300)
    conn = _connection(stub, console, patience_s=60)
    conn.clock = lambda: next(clock)  # each attempt 10 s later
    with pytest.raises(submit.RemoteError) as err:
        asyncio.run(submit._follow(conn, cpb.Evaluation(id="job1"), console, False))
    assert "coordinator 127.0.0.1:1 is unreachable" in err.value.message
    assert stub.calls == 7  # lost at t=0, retried every 10 s of the fake clock until 60


_real_sleep = asyncio.sleep


async def _no_sleep(delay, *args, **kwargs):
    await _real_sleep(0)


def test_several_coordinators_are_tried_in_turn(monkeypatch):
    """With --coordinator A,B the client moves to the next coordinator of the store at once,
    and backs off only after trying them all."""
    delays = []

    async def record_sleep(delay, *args, **kwargs):
        delays.append(delay)
        await _real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", record_sleep)
    stub = ScriptedStub([[_unavailable()], [_unavailable()], [_unavailable()],
                         [_event("succeeded", 4, cpb.EVALUATION_STATE_SUCCEEDED)]])
    out = io.StringIO()
    console = Console(file=out, width=300)
    conn = submit.Connection("10.0.0.1:50051, 10.0.0.2:50051", ClientSecurity(), console, 60)
    conn._stub = stub
    used = []

    async def close():
        used.append(conn.address)
        conn._stub = stub
    conn.close = close
    last = asyncio.run(submit._follow(conn, cpb.Evaluation(id="job1"), console, False))
    assert last.state == cpb.EVALUATION_STATE_SUCCEEDED
    assert conn.addresses == ["10.0.0.1:50051", "10.0.0.2:50051"]
    assert used == ["10.0.0.2:50051", "10.0.0.1:50051", "10.0.0.2:50051"]
    assert delays == [0.0, 0.5, 0.0]
    assert "coordinator 10.0.0.1:50051 unreachable" in out.getvalue()
    assert "reconnecting in 0 s to 10.0.0.2:50051" in out.getvalue()
