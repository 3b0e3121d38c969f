"""The seam every inference-worker backend implements, and the values it exchanges.

A backend answers batches of requests of one kind and returns, with the answers, what the batch
cost (positions computed, or tokens and HTTP calls for remote APIs). Each request has its own
outcome: one a backend cannot answer gets an :class:`ItemError` and the rest of the batch is
still answered. Backends are asynchronous, so a remote backend can keep ``num_concurrent`` HTTP
calls in flight and an engine with its own scheduler (vLLM) can take several batches at once;
a backend that computes one batch at a time (hf) serialises itself (see
:class:`~evalfleet.inference.backends.threaded.OneAtATime`).

Workers return token log-probabilities and generations; they never compute metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from evalfleet.common.errors import FailedPreconditionError, InvalidArgumentError
from evalfleet.common.generation import DEFAULT_MAX_GEN_TOKS, GenerationParams
from evalfleet.common.request_kind import RequestKind

__all__ = [
    "CANCELLED", "DEFAULT_MAX_GEN_TOKS", "Answers", "Backend", "BackendArgumentError",
    "BatchRequests", "BatchStatus", "BatchSubmission", "Capabilities", "ChatRendering",
    "ChatTemplateSupport", "Conversation", "Cost", "GenerationParams", "GenerationRequest",
    "ItemError", "ModelInfo", "ProbeResult", "ProviderBatchState", "TokenScores",
]

T = TypeVar("T")


class BackendArgumentError(InvalidArgumentError):
    """A malformed, mistyped or unsupported backend argument; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"model_args.{field}: {message}")
        self.field = field


class ChatTemplateSupport(Enum):
    """How ``--apply_chat_template`` prompts reach a backend (``ChatTemplateSupport`` in proto)."""

    NONE = "none"          # no chat template: such jobs are refused
    RENDER = "render"      # ``apply_chat_template`` renders conversations to prompt text
    MESSAGES = "messages"  # prompts travel as JSON chat messages; the server applies its template


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of the logprob honesty probe of a remote completions server."""

    passed: bool
    findings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What a backend can answer; the coordinator checks a job against it before any work."""

    loglikelihood: bool
    loglikelihood_rolling: bool
    generate_until: bool
    logprobs_unavailable_reason: str = ""
    logprobs_remedy: str = ""
    chat_only: bool = False
    chat_template: ChatTemplateSupport = ChatTemplateSupport.NONE
    max_context_tokens: int = 0
    prefix_sharing: bool = False
    max_concurrent_batches: int = 1
    probe: ProbeResult | None = None
    batch_api: bool = False  # submit_batch/poll_batch go through the provider's batch API


@dataclass(frozen=True)
class ModelInfo:
    """What a worker serves; ``fingerprint`` identifies the model's outputs (answers are cached
    under it)."""

    backend: str
    model_name: str
    revision: str
    tokenizer: str
    max_length: int
    fingerprint: str
    dtype: str
    device: str
    num_parameters: int
    eot_token_id: int
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    capabilities: Capabilities
    library_versions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenScores:
    """Per scored token: its log-probability and whether it was the argmax.

    ``backend_total`` is the backend's own sum of the log-probabilities, computed as the
    reference harness computes it (for bfloat16/float16 log-probabilities: summed in that dtype,
    like lm-eval); None when the sum should be taken over ``logprobs`` in float64.
    """

    logprobs: np.ndarray  # float32, one per scored token
    greedy: np.ndarray  # bool, one per scored token
    backend_total: float | None = None
    usage: Any = None  # token_usage.TokenUsage: this request's share of a remote API's usage

    @property
    def total(self) -> float:
        """The loglikelihood value: ``backend_total`` when set, else the float64 sum."""
        if self.backend_total is not None:
            return self.backend_total
        return float(self.logprobs.astype(np.float64).sum())

    @property
    def is_greedy(self) -> bool:
        """True when every scored token was the argmax (lm-eval's is_greedy)."""
        return bool(self.greedy.all())


@dataclass(frozen=True)
class ItemError:
    """Why one request of a batch was not answered.

    ``retryable``: another try (here or on another worker) may succeed, e.g. a remote server's
    5xx after the backend's own retries; False when the request can never be answered as asked.
    ``cancelled``: the backend stopped before it (see :meth:`Backend.interrupt`); not the
    request's fault, so asking again does not count as a try.
    """

    message: str
    retryable: bool = False
    cancelled: bool = False


#: The answer of a request that an interrupted backend did not get to (``Backend.interrupt``).
CANCELLED = ItemError("cancelled: the worker was told to stop before it answered this request",
                      retryable=True, cancelled=True)


@dataclass
class Cost:
    """What answering one batch cost."""

    positions_computed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    http_requests: int = 0
    retries: int = 0
    throttled_seconds: float = 0.0
    compute_seconds: float = 0.0
    throttled_responses: int = 0  # 429/503/timeouts that made the limiter cut
    concurrency: int = 0  # the endpoint's limit of calls in flight (adaptive) as the batch ran
    cached_tokens: int = 0  # the part of prompt_tokens read from the API's prompt cache
    reasoning_tokens: int = 0  # the part of completion_tokens spent thinking

    def add(self, other: Cost) -> None:
        """Accumulate ``other`` into this cost (``concurrency``: the higher of the two)."""
        for name in self.__dataclass_fields__:
            combine = max if name == "concurrency" else (lambda a, b: a + b)
            setattr(self, name, combine(getattr(self, name), getattr(other, name)))


@dataclass
class Answers(Generic[T]):
    """One outcome per request, in request order, and what the batch cost."""

    results: list[T | ItemError]
    cost: Cost = field(default_factory=Cost)


@dataclass(frozen=True)
class GenerationRequest:
    """One ``generate_until`` request.

    ``context`` is prompt text, or chat messages (``[{"role", "content"}, ...]``) for backends
    whose prompts are messages (chat APIs).
    """

    context: str | list[dict[str, str]]
    params: GenerationParams


@dataclass(frozen=True)
class Conversation:
    """Chat messages to render with the model's template."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    add_generation_prompt: bool = True

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages as chat-format dicts."""
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass(frozen=True)
class ChatRendering:
    """Prompts rendered with a chat template, and the template that rendered them."""

    prompts: list[str]
    template: str
    template_sha: str


@dataclass(frozen=True)
class BatchRequests:
    """The requests of one provider batch: ``kind`` loglikelihood with (context,
    continuation) pairs, or generate_until with :class:`GenerationRequest` items."""

    kind: RequestKind
    items: Sequence[Any]


@dataclass(frozen=True)
class BatchSubmission:
    """A provider batch: its id, and whether it was found again by its tag (not created)."""

    batch_id: str
    reused: bool = False


class ProviderBatchState(Enum):
    """Where a provider batch stands (``ProviderBatchState`` in proto)."""

    IN_PROGRESS = "in_progress"
    ENDED = "ended"
    EXPIRED = "expired"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass
class BatchStatus:
    """A provider batch's state and counts (the provider's own) and, once terminal and asked
    for, one outcome per submitted item in submission order."""

    state: ProviderBatchState
    total: int = 0
    succeeded: int = 0
    errored: int = 0
    pending: int = 0
    answers: Answers | None = None


class Backend(ABC):
    """A model (local or behind an API) that scores and generates text for an inference worker.

    Every answering method returns one outcome per request, in input order, and the batch's
    cost. A request the backend cannot answer gets an :class:`ItemError`; an exception from a
    request is answered on that request by the worker (the batch is halved to find it): raise
    ``UnavailableError`` for problems of the worker itself.
    """

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_model_args(cls, model_args: dict[str, Any], *,
                        batch_size: int | str = 1) -> Backend:
        """Load from lm-eval style model_args (may block for minutes: callers use a thread);
        raise BackendArgumentError on bad args."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called once on the worker's event loop before serving (e.g. probe a remote server)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and resources."""

    def interrupt(self) -> None:  # noqa: B027 - optional hook
        """Stop answering, for a worker about to stop: the batch computing ends after the work
        in progress (a forward) and answers what it finished, every other request of it and of
        later batches gets :data:`CANCELLED`. Called from any thread; it stays in effect. A
        backend without it (a remote API's, whose calls end in seconds) answers as usual."""

    async def refresh(self) -> None:  # noqa: B027 - optional hook
        """Called before each GetModelInfo answer (the coordinator asks when a job is created):
        a backend whose capabilities can change brings them up to date here (a remote
        completions backend re-runs its logprob probe when the last one is old)."""

    def load_notes(self) -> list[str]:
        """What the user should hear once about how the model was loaded (e.g. the batch size
        ``--batch_size auto`` chose): one line each; none by default."""
        return []

    @abstractmethod
    def model_info(self) -> ModelInfo:
        """Describe the loaded model and what it can answer."""

    @abstractmethod
    async def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> Answers[TokenScores]:
        """Scores of each continuation's tokens given its context."""

    @abstractmethod
    async def loglikelihood_rolling(self, texts: Sequence[str]) -> Answers[TokenScores]:
        """Scores of every token of each text, over lm-eval's rolling windows."""

    @abstractmethod
    async def generate_until(self, requests: Sequence[GenerationRequest]) -> Answers[str]:
        """Generated continuations, cut at the first stop sequence."""

    async def apply_chat_template(self, conversations: Sequence[Conversation],
                                  template_name: str | None = None) -> ChatRendering:
        """Render conversations to prompts with the model's chat template (lm-eval's
        ``apply_chat_template``); only for ``ChatTemplateSupport.RENDER`` backends."""
        raise NotImplementedError(f"backend {self.name!r} does not render chat templates")

    async def submit_batch(self, tag: str, requests: BatchRequests) -> BatchSubmission:
        """Send ``requests`` through the provider's batch API (``Capabilities.batch_api``);
        return an earlier batch carrying ``tag`` instead where the provider can find one."""
        raise FailedPreconditionError(
            f"backend {self.name!r} has no provider batch API (model_args batch_api); send the "
            "requests online")

    async def poll_batch(self, batch_id: str, requests: BatchRequests | None) -> BatchStatus:
        """The state of batch ``batch_id``; with ``requests`` (those given to
        :meth:`submit_batch`) and a terminal state, its answers too."""
        raise FailedPreconditionError(
            f"backend {self.name!r} has no provider batch API (model_args batch_api); there is "
            "no batch to poll")
