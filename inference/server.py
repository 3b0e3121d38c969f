"""The inference worker's gRPC service: one loaded backend behind ``InferenceService``.

The servicer only translates between protobuf batches and the backend's async API. Concurrency
is the backend's: the hf backend computes one batch at a time (preparing the next meanwhile),
remote backends keep several HTTP calls in flight. Each request gets its own outcome; an
``ItemError`` travels on that item and the rest of the batch is answered. A backend that raises
for a batch does not fail it: the requests it raises for are found by halving the batch and get
an ``ItemError`` each (see :func:`answer_each`), so one client's bad request never costs the
others their answers, nor the worker its health (the coordinator takes a batch's error status as
the worker's fault only for transport failures).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from evalfleet.common.errors import EvalfleetError, InvalidArgumentError, UnavailableError
from evalfleet.common.logging import get_logger
from evalfleet.common.metrics import WorkerMetrics
from evalfleet.common.redact import redact_mapping
from evalfleet.common.request_kind import RequestKind
from evalfleet.common.rpc import RunningServer, Service, start_server
from evalfleet.common.security import ServerSecurity
from evalfleet.inference.backends import get_backend
from evalfleet.inference.backends.base import (
    Answers,
    Backend,
    BatchRequests,
    BatchStatus,
    Capabilities,
    ChatTemplateSupport,
    Conversation,
    Cost,
    GenerationParams,
    GenerationRequest,
    ItemError,
    ProviderBatchState,
    TokenScores,
)
from evalfleet.inference.backends.reasoning import generation_fields
from evalfleet.v1 import inference_pb2 as pb
from evalfleet.v1 import inference_pb2_grpc as pb_grpc

log = get_logger("worker")

_BATCH_STATE = {
    ProviderBatchState.IN_PROGRESS: pb.PROVIDER_BATCH_STATE_IN_PROGRESS,
    ProviderBatchState.ENDED: pb.PROVIDER_BATCH_STATE_ENDED,
    ProviderBatchState.EXPIRED: pb.PROVIDER_BATCH_STATE_EXPIRED,
    ProviderBatchState.FAILED: pb.PROVIDER_BATCH_STATE_FAILED,
    ProviderBatchState.CANCELED: pb.PROVIDER_BATCH_STATE_CANCELED,
}
#: Longest SubmitBatchRequest.tag (OpenAI's limit on a metadata value).
MAX_BATCH_TAG = 512

_CHAT_SUPPORT = {
    ChatTemplateSupport.NONE: pb.CHAT_TEMPLATE_SUPPORT_NONE,
    ChatTemplateSupport.RENDER: pb.CHAT_TEMPLATE_SUPPORT_RENDER,
    ChatTemplateSupport.MESSAGES: pb.CHAT_TEMPLATE_SUPPORT_MESSAGES,
}


def capabilities_pb(caps: Capabilities) -> pb.Capabilities:
    """The protobuf form of a backend's capabilities."""
    msg = pb.Capabilities(
        loglikelihood=caps.loglikelihood, loglikelihood_rolling=caps.loglikelihood_rolling,
        generate_until=caps.generate_until,
        logprobs_unavailable_reason=caps.logprobs_unavailable_reason,
        logprobs_remedy=caps.logprobs_remedy, chat_only=caps.chat_only,
        chat_template=_CHAT_SUPPORT[caps.chat_template],
        max_context_tokens=caps.max_context_tokens, prefix_sharing=caps.prefix_sharing,
        max_concurrent_batches=caps.max_concurrent_batches,
        same_context=True,  # the servicer resolves it for every backend
        batch_api=caps.batch_api)
    if caps.probe is not None:
        msg.logprob_probe.CopyFrom(pb.LogprobProbe(ran=True, passed=caps.probe.passed,
                                                   findings=list(caps.probe.findings)))
    return msg


def cost_pb(cost: Cost) -> pb.BatchCost:
    """The protobuf form of a batch's cost."""
    return pb.BatchCost(**{name: getattr(cost, name) for name in cost.__dataclass_fields__})


def _item_error_pb(error: ItemError) -> pb.ItemError:
    return pb.ItemError(message=error.message, retryable=error.retryable,
                        cancelled=error.cancelled)


def _token_scores_pb(request_id: str, outcome: TokenScores | ItemError) -> pb.TokenScores:
    msg = pb.TokenScores(request_id=request_id)
    if isinstance(outcome, ItemError):
        msg.error.CopyFrom(_item_error_pb(outcome))
    else:
        msg.logprobs.extend(outcome.logprobs.tolist())
        msg.greedy.extend(outcome.greedy.tolist())
        if outcome.backend_total is not None:
            msg.total = outcome.backend_total
        if outcome.usage:  # a remote API's usage, this request's share
            msg.prompt_tokens = outcome.usage.prompt_tokens
            msg.completion_tokens = outcome.usage.completion_tokens
            msg.cached_tokens = outcome.usage.cached_tokens
    return msg


def _generation_pb(request_id: str, outcome: str | ItemError) -> pb.Generation:
    if isinstance(outcome, ItemError):
        return pb.Generation(request_id=request_id, error=_item_error_pb(outcome))
    return pb.Generation(request_id=request_id, text=outcome, **generation_fields(outcome))


def generation_params_from_pb(params: pb.GenerationParams, field: str = "params"
                              ) -> GenerationParams:
    """Backend generation parameters from their protobuf form; INVALID_ARGUMENT naming
    ``field`` for values no backend can generate with (the coordinator never sends them: it
    checks every job's generation arguments when the job is created)."""
    def bad(name: str, what: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{field}.{name}: {what}, got {getattr(params, name)!r}")

    if params.max_gen_toks < 0:
        raise bad("max_gen_toks", "must be >= 1 (0 means the default, 256)")
    if not 0.0 <= params.temperature < math.inf:
        raise bad("temperature", "must be a finite number >= 0")
    if params.HasField("top_p") and not 0.0 < params.top_p <= 1.0:
        raise bad("top_p", "must be in (0, 1]")
    if params.HasField("top_k") and params.top_k < -1:
        raise bad("top_k", "must be >= 0 (or -1 for no limit)")
    return GenerationParams(
        until=list(params.until),
        max_gen_toks=params.max_gen_toks or 256,
        temperature=params.temperature,
        do_sample=params.do_sample,
        top_p=params.top_p if params.HasField("top_p") else None,
        top_k=params.top_k if params.HasField("top_k") else None,
        seed=params.seed if params.HasField("seed") else None,
    )


def _generation_context(index: int, item: pb.GenerateItem) -> str | list[dict[str, str]]:
    if item.chat_messages:
        return _chat_messages(index, item.context)
    if not item.context:
        raise InvalidArgumentError(f"items[{index}].context: empty; a generation needs a "
                                   "prompt to continue")
    return item.context


#: Longest message of an ItemError made from an exception.
MAX_ITEM_ERROR = 500
#: Exceptions that are the worker's or the method's, not a request's: the whole call fails
#: with their status (UNAVAILABLE takes the worker out until its health check passes;
#: UNIMPLEMENTED fails the job).
_NOT_ISOLATED = (UnavailableError, NotImplementedError)


def item_error_for(exc: Exception) -> ItemError:
    """The ItemError of a request the backend raised ``exc`` for: retryable (a try each, on
    any worker) unless the request itself is invalid."""
    message = exc.message if isinstance(exc, EvalfleetError) else \
        f"{type(exc).__name__}: {exc}"
    if len(message) > MAX_ITEM_ERROR:
        message = message[:MAX_ITEM_ERROR] + "..."
    return ItemError(message, retryable=not isinstance(exc, InvalidArgumentError))


async def answer_each(kind: RequestKind, call: Callable[[list], Awaitable[Answers]],
                      arguments: list, refused: dict[int, ItemError] | None = None) -> Answers:
    """``call(arguments)``, each request with its own outcome.

    Requests in ``refused`` (position -> error) are answered with their error and never reach
    the backend. When ``call`` raises for a batch, the batch is halved until the requests it
    raises for are alone; they are answered with :func:`item_error_for` and the others with
    their answers (one log line per batch). :data:`_NOT_ISOLATED` errors still fail the call.
    """
    refused = refused or {}
    asked = [i for i in range(len(arguments)) if i not in refused]
    outcome = await _bisect(call, [arguments[i] for i in asked])
    if outcome.raised:
        log.warning("requests_raised", kind=kind, items=len(asked), raised=outcome.raised,
                    error=outcome.error)
    results: list = [refused.get(i) for i in range(len(arguments))]
    for i, result in zip(asked, outcome.results, strict=True):
        results[i] = result
    return Answers(results, outcome.cost)


@dataclass
class _Bisected:
    """Answers of a batch the backend may have raised for: how many requests raised, and
    the first error."""

    results: list
    cost: Cost
    raised: int = 0
    error: str = ""


async def _bisect(call: Callable[[list], Awaitable[Answers]], arguments: list) -> _Bisected:
    if not arguments:
        return _Bisected([], Cost())
    try:
        answers = await call(arguments)
    except _NOT_ISOLATED:
        raise
    except Exception as exc:  # noqa: BLE001 - the error of a request, answered on it
        if len(arguments) == 1:
            error = item_error_for(exc)
            return _Bisected([error], Cost(), 1, error.message)
        half = len(arguments) // 2
        left = await _bisect(call, arguments[:half])
        right = await _bisect(call, arguments[half:])
        left.cost.add(right.cost)
        return _Bisected(left.results + right.results, left.cost, left.raised + right.raised,
                         left.error or right.error)
    return _Bisected(list(answers.results), answers.cost)


def _chat_messages(index: int, text: str) -> list[dict[str, str]]:
    try:
        messages = json.loads(text)
    except json.JSONDecodeError:
        messages = None
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in messages):
        raise InvalidArgumentError(
            f"items[{index}].context: chat_messages is set but the context is not a JSON array "
            'of one or more {"role": ..., "content": ...} messages')
    return messages


def _loglikelihood_arguments(items) -> list[tuple[str, str]]:
    """(context, continuation) of each item, an item with ``same_context`` taking the previous
    item's context (the very same string object)."""
    arguments: list[tuple[str, str]] = []
    context = ""
    for index, item in enumerate(items):
        if item.same_context:
            if not index or item.context:
                raise InvalidArgumentError(
                    f"items[{index}].same_context: set on "
                    f"{'the first item' if not index else 'an item with its own context'}; "
                    "it means 'the previous item's context', with context left empty")
        else:
            context = item.context
        arguments.append((context, item.continuation))
    return arguments


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Serves one backend."""

    def __init__(self, backend: Backend, model_args: dict[str, Any] | None = None) -> None:
        self._backend = backend
        # what GetModelInfo tells callers: secrets (api_key, ...) never leave the worker
        self._model_args = {k: str(v) for k, v in redact_mapping(model_args or {}).items()}

    @staticmethod
    def _log(kind: RequestKind, n: int, answers: Answers) -> None:
        failed = sum(isinstance(r, ItemError) for r in answers.results)
        log.info("batch_done", kind=kind, items=n, failed=failed,
                 positions=answers.cost.positions_computed,
                 seconds=round(answers.cost.compute_seconds, 3),
                 retries=answers.cost.retries)

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context) -> pb.ModelInfo:
        await self._backend.refresh()
        info = self._backend.model_info()
        return pb.ModelInfo(
            backend=info.backend, model_name=info.model_name, revision=info.revision,
            tokenizer=info.tokenizer, max_length=info.max_length, fingerprint=info.fingerprint,
            dtype=info.dtype, device=info.device, num_parameters=info.num_parameters,
            eot_token_id=info.eot_token_id, bos_token=info.bos_token or "",
            eos_token=info.eos_token or "", pad_token=info.pad_token or "",
            model_args=self._model_args, capabilities=capabilities_pb(info.capabilities),
            library_versions=dict(info.library_versions),
        )

    async def _scores(self, kind: RequestKind, call: Callable, arguments: list, ids: list[str]):
        answers = await answer_each(kind, call, arguments)
        self._log(kind, len(arguments), answers)
        return [_token_scores_pb(i, r) for i, r in zip(ids, answers.results, strict=True)], \
            cost_pb(answers.cost)

    async def Loglikelihood(self, request: pb.LoglikelihoodRequest, context
                            ) -> pb.LoglikelihoodResponse:
        results, cost = await self._scores(
            RequestKind.LOGLIKELIHOOD, self._backend.loglikelihood,
            _loglikelihood_arguments(request.items),
            [item.request_id for item in request.items])
        return pb.LoglikelihoodResponse(results=results, cost=cost)

    async def LoglikelihoodRolling(self, request: pb.LoglikelihoodRollingRequest, context
                                   ) -> pb.LoglikelihoodRollingResponse:
        results, cost = await self._scores(
            RequestKind.LOGLIKELIHOOD_ROLLING, self._backend.loglikelihood_rolling,
            [item.text for item in request.items], [item.request_id for item in request.items])
        return pb.LoglikelihoodRollingResponse(results=results, cost=cost)

    async def GenerateUntil(self, request: pb.GenerateUntilRequest, context
                            ) -> pb.GenerateUntilResponse:
        items: list[GenerationRequest | None] = []
        refused: dict[int, ItemError] = {}  # items no backend can generate: answered alone
        for i, item in enumerate(request.items):
            try:
                items.append(GenerationRequest(
                    _generation_context(i, item),
                    generation_params_from_pb(item.params, f"items[{i}].params")))
            except InvalidArgumentError as exc:
                items.append(None)
                refused[i] = ItemError(exc.message, retryable=False)
        answers = await answer_each(RequestKind.GENERATE_UNTIL, self._backend.generate_until,
                                    items, refused)
        self._log(RequestKind.GENERATE_UNTIL, len(items), answers)
        return pb.GenerateUntilResponse(
            results=[_generation_pb(item.request_id, r)
                     for item, r in zip(request.items, answers.results, strict=True)],
            cost=cost_pb(answers.cost))

    async def SubmitBatch(self, request: pb.SubmitBatchRequest, context
                          ) -> pb.SubmitBatchResponse:
        if not request.tag:
            raise InvalidArgumentError("tag: empty; give the idempotency tag of the batch (e.g. "
                                       "the job id and chunk key)")
        if len(request.tag) > MAX_BATCH_TAG:
            raise InvalidArgumentError(f"tag: {len(request.tag)} characters, at most "
                                       f"{MAX_BATCH_TAG}")
        batch = _batch_requests(request)
        if batch is None:
            raise InvalidArgumentError("requests: unset; give loglikelihood or generate_until "
                                       "requests")
        submitted = await self._backend.submit_batch(request.tag, batch)
        log.info("batch_submitted", kind=batch.kind, items=len(batch.items),
                 batch_id=submitted.batch_id, reused=submitted.reused)
        return pb.SubmitBatchResponse(batch_id=submitted.batch_id, reused=submitted.reused)

    async def PollBatch(self, request: pb.PollBatchRequest, context) -> pb.PollBatchResponse:
        if not request.batch_id:
            raise InvalidArgumentError("batch_id: empty; give the id SubmitBatch returned")
        batch = _batch_requests(request)
        status = await self._backend.poll_batch(request.batch_id, batch)
        return _poll_response(status, request)

    async def ApplyChatTemplate(self, request: pb.ApplyChatTemplateRequest, context
                                ) -> pb.ApplyChatTemplateResponse:
        for i, conversation in enumerate(request.conversations):
            if not conversation.messages:
                raise InvalidArgumentError(f"conversations[{i}].messages: empty; give one or "
                                           "more messages to render")
        conversations = [
            Conversation(tuple((m.role, m.content) for m in c.messages), c.add_generation_prompt)
            for c in request.conversations]
        rendering = await self._backend.apply_chat_template(conversations,
                                                            request.template_name or None)
        return pb.ApplyChatTemplateResponse(prompts=rendering.prompts,
                                            template=rendering.template,
                                            template_sha=rendering.template_sha)


def _batch_requests(request: pb.SubmitBatchRequest | pb.PollBatchRequest
                    ) -> BatchRequests | None:
    """The backend's form of a SubmitBatch/PollBatch request's requests (None when unset); an
    invalid generation item fails the call (INVALID_ARGUMENT naming it)."""
    which = request.WhichOneof("requests")
    if which == RequestKind.LOGLIKELIHOOD:
        return BatchRequests(RequestKind.LOGLIKELIHOOD,
                             _loglikelihood_arguments(request.loglikelihood.items))
    if which == RequestKind.GENERATE_UNTIL:
        return BatchRequests(RequestKind.GENERATE_UNTIL, [
            GenerationRequest(_generation_context(i, item),
                              generation_params_from_pb(item.params, f"items[{i}].params"))
            for i, item in enumerate(request.generate_until.items)])
    return None


def _poll_response(status: BatchStatus, request: pb.PollBatchRequest) -> pb.PollBatchResponse:
    """PollBatchResponse of ``status``; the answers carry the request ids of ``request``."""
    response = pb.PollBatchResponse(
        state=_BATCH_STATE[status.state], total=status.total, succeeded=status.succeeded,
        errored=status.errored, pending=status.pending)
    answers = status.answers
    which = request.WhichOneof("requests")
    if answers is None or which is None:
        return response
    if which == RequestKind.LOGLIKELIHOOD:
        ids = [item.request_id for item in request.loglikelihood.items]
        response.loglikelihood.CopyFrom(pb.LoglikelihoodResponse(
            results=[_token_scores_pb(i, r) for i, r in zip(ids, answers.results, strict=True)],
            cost=cost_pb(answers.cost)))
    else:
        ids = [item.request_id for item in request.generate_until.items]
        response.generate_until.CopyFrom(pb.GenerateUntilResponse(
            results=[_generation_pb(i, r) for i, r in zip(ids, answers.results, strict=True)],
            cost=cost_pb(answers.cost)))
    return response


def load_backend(backend_name: str, model_args: dict[str, Any],
                 batch_size: int | str = 1) -> Backend:
    """Resolve a backend by registry name and load its model (blocking)."""
    backend_cls = get_backend(backend_name)
    return backend_cls.from_model_args(model_args, batch_size=batch_size)


async def start_worker(backend: Backend, *, host: str = "127.0.0.1", port: int = 0,
                       model_args: dict[str, Any] | None = None,
                       security: ServerSecurity | None = None,
                       metrics: WorkerMetrics | None = None) -> RunningServer:
    """Serve an already loaded backend as an ``InferenceService`` on ``host:port``.

    Runs the backend's ``start`` hook first (remote backends probe their server there).
    ``security``: the bearer token callers must present and TLS; ``metrics``: where its
    batches are counted (``serve worker --metrics_port``).
    """
    await backend.start()
    servicer = InferenceServicer(backend, model_args)
    if metrics is not None:
        metrics.instrument(servicer, backend)
    server = await start_server(
        [Service(pb_grpc.add_InferenceServiceServicer_to_server, servicer,
                 pb.DESCRIPTOR.services_by_name["InferenceService"].full_name)],
        host=host, port=port, security=security,
    )
    server.on_stop(backend.close)
    return server
