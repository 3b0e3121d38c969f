"""User-facing errors and the gRPC status each one maps to.

Raise these anywhere in evalfleet for problems the user can fix; the services turn them into the
matching gRPC status and the CLI into one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import grpc


class EvalfleetError(Exception):
    """A problem the user can fix. ``code`` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(EvalfleetError):
    """A malformed spec or argument; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(EvalfleetError):
    """An unknown task, evaluation or missing data; the message says what was searched."""

    code = grpc.StatusCode.NOT_FOUND


class UnavailableError(EvalfleetError):
    """A worker or coordinator that cannot be reached; the message names the address."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPreconditionError(EvalfleetError):
    """The request is valid but the system is not in a state to answer it yet."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDeniedError(EvalfleetError):
    """The caller may not ask this of this server (e.g. a client-named path on the coordinator);
    the message names the field and the operator flag that would allow it."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(EvalfleetError):
    """A request over one of the server's bounds (spec size, tasks, requests); the message names
    the bound and its value."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message for an exception raised while serving a call."""
    if isinstance(exc, EvalfleetError):
        return exc.code, exc.message
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, str(exc) or "not implemented by this backend"
    code = getattr(exc, "grpc_code", None)
    if isinstance(code, grpc.StatusCode):
        return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def error_for_status(code_name: str, message: str) -> EvalfleetError:
    """The error of gRPC status ``code_name`` (a ``grpc.StatusCode`` name) with ``message``: the
    inverse of ``status_for``, for an error that crossed a process boundary."""
    code = getattr(grpc.StatusCode, code_name, grpc.StatusCode.INTERNAL)
    for cls in (InvalidArgumentError, NotFoundError, UnavailableError, FailedPreconditionError,
                PermissionDeniedError, ResourceExhaustedError):
        if cls.code == code:
            return cls(message)
    error = EvalfleetError(message)
    error.code = code
    return error
