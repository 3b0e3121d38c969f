"""Who may run generated code: the operator's flag and the job's, both required."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator

import grpc

from evalfleet.common.errors import EvalfleetError

_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("evalfleet_run_code",
                                                                default=False)
HOW = ("start the coordinator with --confirm_run_unsafe_code (`evalfleet serve coordinator "
       "--confirm_run_unsafe_code`) and pass --confirm_run_unsafe_code with the job; `evalfleet "
       "eval --confirm_run_unsafe_code` without --coordinator does both")


class UnsafeCodeError(EvalfleetError):
    """A job needs to run model-generated code and was not allowed to."""

    code = grpc.StatusCode.PERMISSION_DENIED


def check_unsafe_code(unsafe_tasks: Iterable[str], *, operator_allows: bool,
                      job_confirms: bool) -> None:
    """Refuse a job whose tasks run generated code unless the coordinator's operator and the
    job both confirmed it (a remote client cannot turn it on by itself)."""
    names = sorted(set(unsafe_tasks))
    if not names or (operator_allows and job_confirms):
        return
    missing = []
    if not operator_allows:
        missing.append("this coordinator was not started with --confirm_run_unsafe_code")
    if not job_confirms:
        missing.append("the job did not pass --confirm_run_unsafe_code")
    raise UnsafeCodeError(
        f"task(s) {', '.join(names)} run model-generated code (unsafe_code: true) and "
        f"{' and '.join(missing)}; to allow it, {HOW}")


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
