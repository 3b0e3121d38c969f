"""Provider batch APIs (``batch_api=true``): a remote backend's SubmitBatch and PollBatch.

A backend that supports them (completions, chat completions, Anthropic messages) plans a batch
as one line per item: the item's index as ``custom_id`` and, as the line's body, exactly the
JSON body its online path posts for that item alone (its own payload builder), with the online
path's response parser for the answer. Items the online path answers without a call (an empty
continuation, a refused request) are answered here too and never sent. So a batch's answers are
the online answers, and the model fingerprint does not change.

The provider side (:mod:`.openai_batch`, :mod:`.anthropic_batch`) uploads the lines, reads the
batch's state and counts, and returns each line's response body or its error. The worker keeps
no state: the poll that reads answers is given the submitted requests and plans them again
(deterministic: same tokenizer, same arguments) to parse each line and to answer the local ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from evalfleet.common.errors import (
    EvalfleetError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from evalfleet.common.logging import get_logger
from evalfleet.inference.backends.api_http import RetryError
from evalfleet.inference.backends.api_template import unreadable
from evalfleet.inference.backends.base import (
    Answers,
    BatchRequests,
    BatchStatus,
    BatchSubmission,
    Cost,
    ItemError,
    ProviderBatchState,
)
from evalfleet.inference.backends.token_usage import add_usage, attach_usage

log = get_logger("backend.batch")

T = TypeVar("T")

#: Prefix of the id of a batch whose items the worker answered by itself (nothing was sent).
LOCAL_BATCH_PREFIX = "evalfleet-local-"
#: HTTP statuses of a line the provider refused as invalid: sending it again cannot help.
INVALID_STATUS = frozenset({400, 401, 403, 404, 413, 422})


@dataclass(frozen=True)
class BatchLine:
    """One provider batch line: the online request body and the online parser of its answer."""

    body: dict[str, Any]
    parse: Callable[[dict[str, Any]], Any]


@dataclass
class BatchPlan:
    """A batch's items: those sent to the provider (by item index) and those answered here."""

    lines: dict[int, BatchLine] = field(default_factory=dict)
    local: dict[int, Any] = field(default_factory=dict)


@dataclass
class ProviderStatus:
    """A provider batch's state and counts; ``ref`` is the provider's batch object (what
    :meth:`ProviderBatches.results` reads the answers from)."""

    state: ProviderBatchState
    total: int = 0
    succeeded: int = 0
    errored: int = 0
    pending: int = 0
    ref: Any = None
    reason: str = ""  # why the batch failed as a whole, as the provider says


class ProviderBatches(Protocol):
    """One provider's batch API; ``max_lines``: the most requests it takes in one batch."""

    max_lines: int

    async def submit(self, tag: str, bodies: dict[int, dict[str, Any]], cost: Cost
                     ) -> BatchSubmission:
        """Create a batch of ``bodies`` (item index -> request body) tagged ``tag``, or return
        an earlier batch carrying ``tag`` where the provider can find one."""
        ...

    async def status(self, batch_id: str, cost: Cost) -> ProviderStatus:
        """The batch's state and counts."""
        ...

    async def results(self, status: ProviderStatus, cost: Cost
                      ) -> dict[int, dict[str, Any] | ItemError]:
        """Each answered line's response body, or the error the provider gave it."""
        ...


def line_error(status: int | None, message: str) -> ItemError:
    """The ItemError of a line the provider did not answer: retryable unless the provider
    refused the request itself as invalid (then sending it again cannot help)."""
    code = f"HTTP {status}: " if status else ""
    return ItemError(f"the provider's batch did not answer this request ({code}{message})",
                     retryable=status not in INVALID_STATUS)


class BatchApiMixin:
    """SubmitBatch/PollBatch for a remote backend (list it before ``RemoteBackend``).

    The backend gives :meth:`batch_provider` and :meth:`batch_plan`; ``args.batch_api`` must be
    true (``Capabilities.batch_api``).
    """

    name: str
    args: Any

    def batch_provider(self) -> ProviderBatches:
        """The provider's batch API, on this backend's client."""
        raise NotImplementedError

    async def batch_plan(self, requests: BatchRequests) -> BatchPlan:
        """Each item as a batch line (its online body and parser) or a local answer; raise
        FailedPreconditionError for a kind this backend cannot answer."""
        raise NotImplementedError

    def _require_batch_api(self) -> None:
        if not self.args.batch_api:
            raise FailedPreconditionError(
                f"the {self.name} worker was started without model_args batch_api=true; start "
                "it with batch_api=true to use the provider's batch API, or send the requests "
                "online")

    async def submit_batch(self, tag: str, requests: BatchRequests) -> BatchSubmission:
        """Send the planned lines as one provider batch tagged ``tag``."""
        self._require_batch_api()
        plan = await self.batch_plan(requests)
        if not plan.lines:
            return BatchSubmission(LOCAL_BATCH_PREFIX + hashlib.sha256(tag.encode()).hexdigest())
        provider = self.batch_provider()
        if len(plan.lines) > provider.max_lines:
            raise InvalidArgumentError(
                f"requests: {len(plan.lines)} go to the provider, which takes at most "
                f"{provider.max_lines} in one batch; submit smaller chunks")
        submitted = await self._provider("batch submit", provider.submit(
            tag, {i: line.body for i, line in sorted(plan.lines.items())}, Cost()))
        log.info("provider_batch", backend=self.name, batch_id=submitted.batch_id,
                 lines=len(plan.lines), reused=submitted.reused)
        return submitted

    async def poll_batch(self, batch_id: str, requests: BatchRequests | None) -> BatchStatus:
        """The batch's state and counts; with ``requests`` and a terminal state, its answers."""
        self._require_batch_api()
        cost = Cost()  # the calls of this poll (answers' usage included)
        if batch_id.startswith(LOCAL_BATCH_PREFIX):
            status = ProviderStatus(ProviderBatchState.ENDED)
        else:
            status = await self._provider(f"batch {batch_id}",
                                          self.batch_provider().status(batch_id, cost))
        out = BatchStatus(status.state, status.total, status.succeeded, status.errored,
                          status.pending)
        if requests is None or status.state is ProviderBatchState.IN_PROGRESS:
            return out
        plan = await self.batch_plan(requests)
        if status.total and len(plan.lines) != status.total:
            raise InvalidArgumentError(
                f"requests: {len(plan.lines)} of them go to the provider but batch {batch_id} "
                f"holds {status.total}; give PollBatch the very requests given to SubmitBatch")
        found = await self._provider(f"the results of batch {batch_id}",
                                     self.batch_provider().results(status, cost)) \
            if plan.lines else {}
        out.answers = Answers(
            [self._answer(i, plan, found, status, cost) for i in range(len(requests.items))],
            cost)
        return out

    async def _provider(self, what: str, call: Awaitable[T]) -> T:
        """``await call``, its failure as the status the worker answers: the provider
        unreachable or failing after the retries UNAVAILABLE, an unknown batch NOT_FOUND, a
        refusal (key, model, URL) or an unreadable answer FAILED_PRECONDITION."""
        where = f"the provider's batch API at {self.args.base_url}"
        try:
            return await call
        except EvalfleetError:
            raise
        except RetryError as exc:
            if exc.failure.retryable:
                raise UnavailableError(f"{where} did not answer ({what}): {exc}") from exc
            if exc.failure.status == 404:
                raise NotFoundError(f"{where} does not know {what}: {exc}") from exc
            raise FailedPreconditionError(f"{where} refused {what}: {exc}; check model_args "
                                          "api_key, base_url and model") from exc
        except Exception as exc:  # noqa: BLE001 - an answer of an unexpected shape
            raise FailedPreconditionError(f"{what}: {unreadable(exc)}") from exc

    @staticmethod
    def _answer(index: int, plan: BatchPlan, found: dict[int, Any], status: ProviderStatus,
                cost: Cost) -> Any:
        if index in plan.local:
            return plan.local[index]
        body = found.get(index)
        if body is None:
            why = f": {status.reason}" if status.reason else ""
            return ItemError(f"the provider's batch ended ({status.state.value}) without "
                             f"answering this request{why}", retryable=True)
        if isinstance(body, ItemError):
            return body
        usage = add_usage(cost, body.get("usage"))  # as online: the cost and the answer's share
        try:
            return attach_usage([plan.lines[index].parse(body)], usage)[0]
        except Exception as exc:  # noqa: BLE001 - an unreadable answer fails its item
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            return ItemError(f"the provider's batch answer could not be read ({detail})",
                             retryable=True)


def jsonl(records: list[dict[str, Any]]) -> bytes:
    """JSON Lines of ``records`` (compact, one per line)."""
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
