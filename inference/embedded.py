"""The embedded worker's process: ``python -m evalfleet.inference.embedded``.

``evalfleet eval`` without ``--coordinator`` runs its worker in this child process, so that the
model's load (imports of torch and transformers, weights) runs on a core of its own while the
command loads the tasks and starts its coordinator (``client/embedded_worker.py`` is the
parent's side). The protocol, all on the child's standard streams:

- stdin, first line: the worker's settings as one JSON object (``WorkerSettings``' fields).
- stdout, one line: ``{"address": "127.0.0.1:PORT", "device": ..., "note": ...}`` once the
  worker serves (``device``: the resolved ``--device``, ``note``: why it differs from the one
  asked for; ``notes``: the backend's ``load_notes``, for the console), or
  ``{"error": {"code": "INVALID_ARGUMENT", "message": ...}}`` when the backend
  could not start; the code is the error's gRPC status name. Everything else the child prints
  goes to stderr.
- stdin, later lines: ``interrupt`` (the parent was interrupted): the backend stops computing
  (``Backend.interrupt``): the batch in flight answers what it finished after the forward in
  progress, its other requests and those of later batches get a ``cancelled`` ``ItemError``.
- stdin's end (the parent closed it, or died) or SIGTERM interrupts the backend the same way,
  then stops the worker. The child has a process group of its own: a Ctrl-C at the terminal
  interrupts the parent only, which tells the child (or kills it, on a second Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from evalfleet.common import lifecycle
from evalfleet.common.errors import EvalfleetError, status_for
from evalfleet.common.logging import configure_logging, get_logger

log = get_logger("embedded_worker")
#: The line on the child's stdin that interrupts its backend.
INTERRUPT = b"interrupt"


@dataclass
class WorkerSettings:
    """What the parent asks of its worker."""

    backend: str
    model_args: dict[str, Any] = field(default_factory=dict)
    batch_size: int | str = 1
    #: ``--max_batch_size``: a bound of ``--batch_size auto`` (a load argument only).
    max_batch_size: int | None = None
    #: ``--device``; resolved here by lm-eval's rule (``inference/devices.py``).
    device: str | None = None
    log_level: str = "WARNING"

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def main() -> None:
    """Load the backend, serve it on loopback, report, and serve until stdin closes."""
    lifecycle.defer_collection()
    report = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not reach the report
    settings = WorkerSettings(**json.loads(sys.stdin.readline()))
    configure_logging(json=False, level=settings.log_level)  # the CLI's stderr, its format
    lifecycle.exit_process(asyncio.run(_serve(settings, report)))


async def _serve(settings: WorkerSettings, report: IO[str]) -> int:
    from evalfleet.inference.server import load_backend, start_worker

    try:
        model_args = dict(settings.model_args)
        device, note = None, None
        if settings.device:
            from evalfleet.inference.devices import resolve_device

            device, note = resolve_device(settings.device)
            model_args.setdefault("device", device)
        load_args = dict(model_args)
        if settings.max_batch_size is not None:
            load_args["max_batch_size"] = settings.max_batch_size
        backend = await asyncio.to_thread(load_backend, settings.backend, load_args,
                                          settings.batch_size)
        server = await start_worker(backend, model_args=model_args)
    except Exception as exc:  # noqa: BLE001 - relayed to the parent, which reports it
        code, message = status_for(exc)
        if not isinstance(exc, EvalfleetError):
            log.exception("backend_start_failed")
        _send(report, {"error": {"code": code.name, "message": message}})
        return 1
    lifecycle.end_startup()
    _send(report, {"address": server.address, "device": device, "note": note,
                   "notes": backend.load_notes()})
    await _parent_gone(backend.interrupt)
    await server.stop(1.0)
    return 0


def _send(report: IO[str], message: dict[str, Any]) -> None:
    report.write(json.dumps(message) + "\n")
    report.flush()


async def _parent_gone(interrupt: Callable[[], None]) -> None:
    """Return when stdin ends (the parent closed it or died) or on SIGTERM, ``interrupt``
    called first; also called for each ``interrupt`` line (thread-safe: it sets a flag)."""
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()

    def stop() -> None:
        interrupt()
        gone.set()

    loop.add_signal_handler(signal.SIGTERM, stop)

    def watch() -> None:
        for line in sys.stdin.buffer:  # until the end
            if line.strip() == INTERRUPT:
                interrupt()
        interrupt()  # the computing thread ends now, not after its batch
        loop.call_soon_threadsafe(gone.set)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    await gone.wait()


if __name__ == "__main__":
    main()
