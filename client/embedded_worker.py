"""The worker of an embedded ``evalfleet eval``, run as a child process.

The model's load is most of a short run's start-up (on a CPU: about 6 s of imports of torch and
transformers, then the weights). In a child process it runs on a core of its own while this
process parses the spec, loads the tasks, opens the store and starts the coordinator; in this
process it would hold the interpreter's lock against all of them. The child is an ordinary
worker (``inference/embedded.py``: the same backends, the same ``InferenceService``); this is
the parent's side: start it, wait for its address, notice its death, stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from evalfleet.common.errors import EvalfleetError, error_for_status
from evalfleet.inference.embedded import INTERRUPT, WorkerSettings

T = TypeVar("T")


class EmbeddedWorkerError(EvalfleetError):
    """The embedded worker's process ended before or while serving."""

    code = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class ServingWorker:
    """Where the started worker serves, and the device it resolved ``--device`` to."""

    address: str
    device: str | None
    note: str | None
    notes: tuple[str, ...] = ()  # the backend's load notes (e.g. the batch size auto chose)


class EmbeddedWorker:
    """A worker process of this command's own: ``start``, ``ready``, ``watch``, ``interrupt``,
    ``stop``, ``kill``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._serving = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The process's exit code once it has ended (negative: the signal that ended it)."""
        return self._proc.returncode

    @classmethod
    async def start(cls, settings: WorkerSettings) -> EmbeddedWorker:
        """Start the worker process; it loads its model while the caller goes on."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evalfleet.inference.embedded",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            # a Ctrl-C at the terminal interrupts this process only; it stops the worker
            process_group=0)
        assert proc.stdin is not None
        proc.stdin.write(settings.to_json().encode() + b"\n")
        with contextlib.suppress(ConnectionError):  # it died at once: ``ready`` says so
            await proc.stdin.drain()
        return cls(proc)

    async def ready(self) -> ServingWorker:
        """Wait until the worker serves. Its start-up error is raised here as the error it was
        (same gRPC status, same message)."""
        assert self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        if not line:
            code = await self._proc.wait()
            raise EmbeddedWorkerError(
                f"the embedded worker's process (pid {self.pid}) ended with code {code} before "
                "it served; its log is above")
        report = json.loads(line)
        if "error" in report:
            raise error_for_status(report["error"]["code"], report["error"]["message"])
        self._serving = True
        return ServingWorker(report["address"], report.get("device"), report.get("note"),
                             tuple(report.get("notes", ())))

    async def watch(self, work: Awaitable[T], *, kept: str) -> T:
        """``work``'s result, unless the worker's process ends first: then ``work`` is
        cancelled and an error says so (``kept``: what became of the answers so far)."""
        task = asyncio.ensure_future(work)
        ended = asyncio.ensure_future(self._proc.wait())
        try:
            await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            ended.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise EmbeddedWorkerError(
            f"the embedded worker's process (pid {self.pid}) ended with code "
            f"{self._proc.returncode} during the evaluation (its log is above; a negative code "
            f"is the signal that killed it, -9 often the out-of-memory killer); {kept}")

    def interrupt(self) -> None:
        """Tell a serving worker to stop computing: its batch in flight answers what it
        finished (after the forward in progress) and cancels the rest, later batches cancel
        everything (``Backend.interrupt``)."""
        if self._serving and self._proc.returncode is None and self._proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):  # it ended meanwhile
                self._proc.stdin.write(INTERRUPT + b"\n")

    def kill(self) -> None:
        """End the process at once (SIGKILL), without waiting: for a command that quits now."""
        if self._proc.returncode is None:
            self._signal(self._proc.kill)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker: a serving one by closing its stdin (it stops serving and exits), one
        still loading its model (the command failed meanwhile) at once by SIGTERM. Escalates
        (terminate, then kill) after ``timeout`` seconds without an exit."""
        if self._proc.returncode is None:
            if self._serving and self._proc.stdin is not None:
                self._proc.stdin.close()
            else:
                self._signal(self._proc.terminate)
        for escalate in (self._proc.terminate, self._proc.kill):
            try:
                await asyncio.wait_for(self._proc.wait(), timeout)
                return
            except TimeoutError:
                self._signal(escalate)
        await self._proc.wait()

    def _signal(self, send: Callable[[], None]) -> None:
        with contextlib.suppress(ProcessLookupError):
            send()
