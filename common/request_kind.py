"""The kinds of request a task asks of a model, and the output types a task declares.

``RequestKind`` is lm-eval's request type (``Instance.request_type``): each kind is answered by
one InferenceService RPC and offered by a worker through one ``Capabilities`` bool field.
``OutputType`` is a task's lm-eval ``output_type``: the request kinds plus ``multiple_choice``,
which asks loglikelihood requests (one per choice).

Both are ``StrEnum``s whose values are the strings lm-eval, stored job specs, results JSON and
samples files use, so a member equals, hashes, prints and serialises (JSON, request ids) as its
string: the enum values ARE the wire and storage boundary. Strings entering from outside (a task
YAML's ``output_type``, a class task's ``Instance.request_type``) are parsed with ``parse``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar


class UnknownKindError(ValueError):
    """A string that names no request kind (or output type); its message says which exist."""


class RequestKind(StrEnum):
    """One kind of model request (lm-eval's ``request_type``)."""

    LOGLIKELIHOOD = "loglikelihood"
    LOGLIKELIHOOD_ROLLING = "loglikelihood_rolling"
    GENERATE_UNTIL = "generate_until"

    @property
    def capability(self) -> str:
        """The ``inference.proto`` ``Capabilities`` bool field saying a worker answers it."""
        return _CAPABILITY[self]

    @property
    def rpc(self) -> str:
        """The InferenceService method that answers a batch of this kind."""
        return _RPC[self]

    @property
    def needs_logprobs(self) -> bool:
        """Whether answers are prompt logprobs (unavailable on chat endpoints)."""
        return self is not RequestKind.GENERATE_UNTIL

    @classmethod
    def parse(cls, value: object, what: str = "request kind") -> RequestKind:
        """``value`` as a kind; ``UnknownKindError`` naming ``what`` and the valid kinds."""
        return _parse(cls, value, what)

    @classmethod
    def from_rpc(cls, method: str) -> RequestKind:
        """The kind an InferenceService method answers (``"GenerateUntil"`` -> generate_until)."""
        for kind, name in _RPC.items():
            if name == method:
                return kind
        raise UnknownKindError(f"unknown InferenceService method {method!r}: expected one of "
                               f"{', '.join(_RPC.values())}")


class OutputType(StrEnum):
    """A task's lm-eval ``output_type``."""

    LOGLIKELIHOOD = "loglikelihood"
    LOGLIKELIHOOD_ROLLING = "loglikelihood_rolling"
    GENERATE_UNTIL = "generate_until"
    MULTIPLE_CHOICE = "multiple_choice"

    @property
    def request_kind(self) -> RequestKind:
        """The kind of request a task of this output type asks (loglikelihood for
        multiple_choice)."""
        if self is OutputType.MULTIPLE_CHOICE:
            return RequestKind.LOGLIKELIHOOD
        return RequestKind(self.value)

    @classmethod
    def parse(cls, value: object, what: str = "output_type") -> OutputType:
        """``value`` as an output type; ``UnknownKindError`` naming ``what`` and the valid ones."""
        return _parse(cls, value, what)


_CAPABILITY = {RequestKind.LOGLIKELIHOOD: "loglikelihood",
               RequestKind.LOGLIKELIHOOD_ROLLING: "loglikelihood_rolling",
               RequestKind.GENERATE_UNTIL: "generate_until"}
_RPC = {RequestKind.LOGLIKELIHOOD: "Loglikelihood",
        RequestKind.LOGLIKELIHOOD_ROLLING: "LoglikelihoodRolling",
        RequestKind.GENERATE_UNTIL: "GenerateUntil"}


_E = TypeVar("_E", bound=StrEnum)


def _parse(cls: type[_E], value: object, what: str) -> _E:
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls(value)
        except ValueError:
            pass
    raise UnknownKindError(f"{what} {value!r} is not one of {', '.join(m.value for m in cls)}")
