"""Which workers serve the model a job asks for (a job is bound to one (backend, fingerprint)
and runs on every READY worker serving it, including ones that join later)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from evalfleet.common.errors import EvalfleetError, FailedPreconditionError, UnavailableError
from evalfleet.server.worker_record import CONNECTING, READY, Worker, describe_worker
from evalfleet.v1 import inference_pb2 as ipb

if TYPE_CHECKING:
    from evalfleet.server.registry import WorkerRegistry


def _same_model_name(wanted: str, served: str) -> bool:
    """Whether two model names or paths name the same model: equal, or one is the other's
    trailing path components (``models/smollm2`` and ``/srv/models/smollm2``)."""
    a, b = wanted.rstrip("/"), served.rstrip("/")
    return bool(a and b) and (a == b or a.endswith("/" + b) or b.endswith("/" + a))


def worker_matches(info: ipb.ModelInfo, *, backend: str, model_args: dict[str, Any],
                   fingerprint: str) -> bool:
    """Whether a worker serves the model a job asks for.

    - ``fingerprint`` (``spec.model_fingerprint``), when given, decides alone: the worker's
      fingerprint equals it or starts with it (``sha256:`` optional).
    - Otherwise the backend must match (``spec.model``: equal, or a prefix of the worker's) and,
      when ``model_args`` names the model (``pretrained``, or ``model`` for API backends), the
      worker's own ``pretrained``/``model`` (or model name) must name the same one.
    """
    if fingerprint:
        wanted = fingerprint.removeprefix("sha256:")
        return info.fingerprint.removeprefix("sha256:").startswith(wanted)
    if backend and not info.backend.startswith(backend):
        return False
    name = str(model_args.get("pretrained") or model_args.get("model") or "")
    if not name:
        return True
    served = [info.model_args.get("pretrained", ""), info.model_args.get("model", ""),
              info.model_name]
    return any(_same_model_name(name, s) for s in served if s)


def several_models_error(matched: list[Worker]) -> EvalfleetError:
    """FAILED_PRECONDITION: workers of more than one model match the job."""
    detail = "; ".join(describe_worker(w) for w in matched)
    return FailedPreconditionError(
        f"workers of several models match the job: {detail}. Name one with "
        "spec.model_fingerprint (--model_fingerprint), or give model_args "
        "pretrained=NAME")


def no_match_error(candidates: list[Worker], *, backend: str, model_args: dict[str, Any],
                   fingerprint: str) -> EvalfleetError:
    """Why no worker serves the job: UNAVAILABLE when none is known or up, FAILED_PRECONDITION
    when those up serve other models; each candidate is named with its state."""
    want = (f"model_fingerprint {fingerprint}" if fingerprint else
            f"backend '{backend or 'any'}'" + (
                f" with {model_args.get('pretrained') or model_args.get('model')}"
                if model_args.get("pretrained") or model_args.get("model") else ""))
    if not candidates:
        return UnavailableError(
            "no inference workers: start the coordinator with --workers host:port (or a "
            "dns:/// name), or start workers with `evalfleet serve worker --register "
            "COORDINATOR`")
    listing = "; ".join(describe_worker(w) for w in sorted(candidates,
                                                           key=lambda w: w.address))
    if not any(w.state == READY for w in candidates):
        return UnavailableError(f"no worker is up for {want}: {listing}")
    return FailedPreconditionError(f"no worker serves {want}: {listing}")


async def select_workers(registry: WorkerRegistry, *, backend: str, model_args: dict[str, Any],
                         fingerprint: str, allowed: set[str] | None, wait_s: float
                         ) -> list[Worker]:
    """The READY workers a new job runs on; they all serve one (backend, fingerprint).

    Waits up to ``wait_s`` while candidate workers are still connecting (a job is never
    placed on part of the fleet while the rest is still unknown). UNAVAILABLE when
    no worker is up; FAILED_PRECONDITION when none serves the model asked for, or several
    models match (then name one with spec.model_fingerprint).
    """
    deadline = time.monotonic() + wait_s
    while True:
        candidates = [w for w in registry.workers.values()
                      if allowed is None or w.address in allowed]
        matched = [w for w in candidates if w.state == READY and w.info is not None
                   and worker_matches(w.info, backend=backend, model_args=model_args,
                                      fingerprint=fingerprint)]
        if len({w.model_key for w in matched}) > 1:
            raise several_models_error(matched)
        # A worker still connecting may serve the model too (or another that matches):
        # decide once every candidate has answered, or at the deadline.
        connecting = any(w.state == CONNECTING for w in candidates)
        if matched and (not connecting or time.monotonic() >= deadline):
            return matched
        if time.monotonic() >= deadline or (
                candidates and all(w.state == READY for w in candidates)):
            break
        await registry.wait_changed(min(0.5, max(0.01, deadline - time.monotonic())))
    raise no_match_error(candidates, backend=backend, model_args=model_args,
                         fingerprint=fingerprint)
