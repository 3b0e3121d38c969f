"""Who may run generated code: the operator's flag and the job's, both required; and where: in
bubblewrap, or under a weaker sandbox only when the operator accepts it (--allow_weak_sandbox)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator

import grpc

from evalfleet.common.errors import EvalfleetError
from evalfleet.common.logging import get_logger
from evalfleet.execution.isolation import Isolation, detect

log = get_logger("sandbox")

_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("evalfleet_run_code",
                                                                default=False)
HOW = ("start the coordinator with --confirm_run_unsafe_code (`evalfleet serve coordinator "
       "--confirm_run_unsafe_code`) and pass --confirm_run_unsafe_code with the job; `evalfleet "
       "eval --confirm_run_unsafe_code` without --coordinator does both")


class UnsafeCodeError(EvalfleetError):
    """A job needs to run model-generated code and was not allowed to."""

    code = grpc.StatusCode.PERMISSION_DENIED


class WeakSandboxError(EvalfleetError):
    """A job needs to run generated code and this machine's sandbox is weaker than bubblewrap."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def check_unsafe_code(unsafe_tasks: Iterable[str], *, operator_allows: bool,
                      job_confirms: bool, allow_weak_sandbox: bool = False) -> None:
    """Refuse a job whose tasks run generated code unless the coordinator's operator and the
    job both confirmed it (a remote client cannot turn it on by itself), and, when they did,
    unless its programs run in bubblewrap or the operator allowed a weaker sandbox
    (``check_sandbox``). Probes the sandbox once per process: call it off an event loop."""
    names = sorted(set(unsafe_tasks))
    if not names:
        return
    if operator_allows and job_confirms:
        check_sandbox(names, allow_weak_sandbox=allow_weak_sandbox)
        return
    missing = []
    if not operator_allows:
        missing.append("this coordinator was not started with --confirm_run_unsafe_code")
    if not job_confirms:
        missing.append("the job did not pass --confirm_run_unsafe_code")
    raise UnsafeCodeError(
        f"task(s) {', '.join(names)} run model-generated code (unsafe_code: true) and "
        f"{' and '.join(missing)}; to allow it, {HOW}")


def check_sandbox(unsafe_tasks: Iterable[str], *, allow_weak_sandbox: bool,
                  isolation: Isolation | None = None) -> None:
    """FAILED_PRECONDITION for tasks that run generated code when this machine's sandbox
    (``isolation``, probed by default) is weaker than bubblewrap and the operator did not pass
    --allow_weak_sandbox: the error names the sandbox, what it lets a program do and the two
    ways out."""
    names = sorted(set(unsafe_tasks))
    iso = isolation or detect()
    if not names or not iso.weak:
        return
    if allow_weak_sandbox:
        log.warning("running generated code under a weak sandbox (--allow_weak_sandbox)",
                    tasks=names, sandbox=iso.describe(), risks=iso.risks())
        return
    raise WeakSandboxError(
        f"task(s) {', '.join(names)} run model-generated code, and this coordinator's sandbox is "
        f"weaker than bubblewrap ({iso.describe()}): {iso.risks()}; install bubblewrap (`bwrap`,"
        " e.g. apt-get install bubblewrap) and restart the coordinator, or accept the risk by "
        "starting it with --allow_weak_sandbox (`evalfleet serve coordinator "
        "--allow_weak_sandbox`; `evalfleet eval --allow_weak_sandbox` without --coordinator)")


@contextlib.contextmanager
def allow_code_execution(allowed: bool = True) -> Iterator[None]:
    """Within this block (and threads started from it with copied context), code metrics may
    run programs."""
    token = _ALLOWED.set(allowed)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def require_allowed() -> None:
    """Raise unless code execution was allowed for the current job."""
    if not _ALLOWED.get():
        raise UnsafeCodeError(f"running generated code was not allowed; {HOW}")
