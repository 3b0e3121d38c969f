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
- stdin's end (the parent closed it, or died) stops the worker. The child has a process group
  of its own: a Ctrl-C at the terminal interrupts the parent, which stops the child.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from evalfleet.common import lifecycle
from evalfleet.common.errors import EvalfleetError, status_for
from evalfleet.common.logging import configure_logging, get_logger

log = get_logger("embedded_worker")


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
    await _parent_gone()
    await server.stop(1.0)
    return 0


def _send(report: IO[str], message: dict[str, Any]) -> None:
    report.write(json.dumps(message) + "\n")
    report.flush()


async def _parent_gone() -> None:
    """Return when stdin ends (the parent closed it or died) or on SIGTERM."""
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, gone.set)

    def watch() -> None:
        sys.stdin.buffer.read()  # the parent never writes again: this returns at the end
        loop.call_soon_threadsafe(gone.set)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    await gone.wait()


if __name__ == "__main__":
    main()
