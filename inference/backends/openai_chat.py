"""``local-chat-completions`` and ``openai-chat-completions``: an OpenAI-compatible
/v1/chat/completions endpoint through the official ``openai`` client (lm-eval's
``LocalChatCompletion`` and ``OpenAIChatCompletion``).

Generation only: prompts travel as chat messages (``--apply_chat_template``; the server applies
its own chat template), one conversation per HTTP request. Payloads are lm-eval 0.4.13's:
``{"messages", "model", "max_tokens" (OpenAI: "max_completion_tokens"), "temperature",
"stop": stop[:4], "seed", ...}``; for OpenAI models whose name contains ``o1``, ``o3``, ``o4`` or
``5`` the stop sequences are dropped and the temperature is 1, as lm-eval does. The answer is
``choices[0].message.content`` (after ``think_end_token`` when given; the server's separate
``reasoning_content`` and the thinking are kept apart, see :mod:`.reasoning`).

Chat endpoints return no prompt logprobs, so loglikelihood tasks are refused before any work
(lm-eval raises NotImplementedError half-way through instead).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from evalfleet.common.errors import FailedPreconditionError
from evalfleet.common.logging import get_logger
from evalfleet.common.request_kind import RequestKind
from evalfleet.inference.backends.api_args import parse_api_args
from evalfleet.inference.backends.api_http import openai_client
from evalfleet.inference.backends.api_template import (
    NONE_ANSWER,
    RemoteBackend,
    gen_extras,
    handle_stop_sequences,
    require_api_key,
)
from evalfleet.inference.backends.api_tokenizer import load_api_tokenizer
from evalfleet.inference.backends.base import (
    Answers,
    BackendArgumentError,
    BatchRequests,
    Capabilities,
    ChatTemplateSupport,
    Cost,
    GenerationRequest,
    ItemError,
    TokenScores,
)
from evalfleet.inference.backends.openai_batch import OpenAIBatches
from evalfleet.inference.backends.provider_batch import BatchApiMixin, BatchLine, BatchPlan
from evalfleet.inference.backends.reasoning import api_generation
from evalfleet.inference.backends.token_usage import add_usage

log = get_logger("backend.chat")

CHAT_REMEDY = ("point local-completions at the same server's /v1/completions endpoint (vLLM's "
               "OpenAI-compatible server answers it with prompt logprobs), or run generative "
               "tasks only (e.g. gsm8k with --apply_chat_template)")


def refuse_scoring(n: int, reason: str) -> Answers[TokenScores]:
    """Every item refused with ``reason`` (the coordinator refuses such jobs up front)."""
    return Answers([ItemError(reason)] * n)


def chat_messages_plan(backend: Any, requests: BatchRequests,
                       payload: Callable[[list[dict[str, str]], GenerationRequest], dict],
                       parse: Callable[[dict[str, Any]], Any]) -> BatchPlan:
    """The provider batch of a chat backend (one conversation per online call): each item's
    body ``payload(messages, request)`` parsed by ``parse``, or its refusal
    (``backend.refusal``); scoring kinds are refused (``backend.logprobs_reason``)."""
    if requests.kind != RequestKind.GENERATE_UNTIL:
        raise FailedPreconditionError(f"{requests.kind}: {backend.logprobs_reason}")
    plan = BatchPlan()
    for i, request in enumerate(requests.items):
        refusal = backend.refusal(request)
        if refusal is not None:
            plan.local[i] = refusal
        else:
            plan.lines[i] = BatchLine(payload(request.context, request), parse)
    return plan


class LocalChatBackend(BatchApiMixin, RemoteBackend):
    """An OpenAI-compatible /v1/chat/completions server (vLLM, LM Studio, llama.cpp, ...)."""

    name: ClassVar[str] = "local-chat-completions"
    family: ClassVar[str] = "openai-chat"
    sdk: ClassVar[str] = "openai"
    default_base_url: ClassVar[str | None] = None
    api_key_required: ClassVar[bool] = False
    token_limit_key: ClassVar[str] = "max_tokens"
    #: whether the server takes ``chat_template_kwargs`` (vLLM, SGLang, llama.cpp do)
    template_kwargs: ClassVar[bool] = True
    logprobs_reason: ClassVar[str] = (
        "chat endpoints return no prompt logprobs, so loglikelihood (multiple_choice) and "
        "loglikelihood_rolling (perplexity) requests cannot be answered")

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any], *,
                        batch_size: int | str = 1) -> LocalChatBackend:
        args = parse_api_args(cls.name, model_args, batch_size=batch_size,
                              default_base_url=cls.default_base_url,
                              default_tokenizer_backend=None, tokenized_default=False)
        if args.max_gen_toks != 256:
            raise BackendArgumentError(
                "max_gen_toks", "set the generation budget per job with --gen_kwargs "
                                "max_gen_toks=N (the coordinator sends it with each request)")
        if args.batch_size > 1:
            log.warning("chat_batch_size_ignored", batch_size=args.batch_size,
                        reason="chat completions take one conversation per request")
            args.batch_size = 1
        if cls.api_key_required:
            require_api_key(args, "OPENAI_API_KEY", cls.name)
        if args.enable_thinking is not None and not cls.template_kwargs:
            raise BackendArgumentError(
                "enable_thinking", f"{cls.name} takes no chat template arguments (its reasoning "
                                   "models always think); drop enable_thinking")
        # A tokenizer, when given, only contributes its EOS text to the stop sequences (as in
        # lm-eval); prompts are messages rendered by the server.
        return cls(args, load_api_tokenizer(args))

    def make_client(self) -> Any:
        return openai_client(self.args)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            loglikelihood=False, loglikelihood_rolling=False, generate_until=True,
            logprobs_unavailable_reason=self.logprobs_reason, logprobs_remedy=CHAT_REMEDY,
            chat_only=True, chat_template=ChatTemplateSupport.MESSAGES,
            max_concurrent_batches=self.args.num_concurrent, batch_api=self.args.batch_api)

    async def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> Answers[TokenScores]:
        return refuse_scoring(len(requests), self.logprobs_reason)

    async def loglikelihood_rolling(self, texts: Sequence[str]) -> Answers[TokenScores]:
        return refuse_scoring(len(texts), self.logprobs_reason)

    def payload(self, messages: list[dict[str, str]], request: GenerationRequest
                ) -> dict[str, Any]:
        """lm-eval's ``LocalChatCompletion._create_payload``."""
        params = request.params
        eos = self.tokenizer.eos_string if self.tokenizer else self.args.eos_string
        stop = handle_stop_sequences(params.until, eos)
        out = {"messages": messages, "model": self.args.model,
               self.token_limit_key: params.max_gen_toks, "temperature": params.temperature,
               "stop": stop[:4], "seed": self.args.seed, **gen_extras(params)}
        if self.args.enable_thinking is not None:  # the server's chat template's switch
            out["chat_template_kwargs"] = {"enable_thinking": self.args.enable_thinking}
        return out

    async def _post(self, payload: dict[str, Any], cost: Cost) -> dict[str, Any]:
        body = dict(payload)
        model, messages = body.pop("model"), body.pop("messages")

        async def send():
            return await self.client.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_body=body)

        raw = await self.http(send, cost, RequestKind.GENERATE_UNTIL)
        data = raw.http_response.json()
        add_usage(cost, data.get("usage"))  # every token kind, cached and reasoning too
        return data

    def parse(self, data: dict[str, Any]) -> str:
        """lm-eval's ``LocalChatCompletion.parse_generations`` for one conversation, the
        server's separate reasoning (``reasoning_content``, vLLM's ``reasoning``) kept apart
        and an answer that ended inside its thinking scored as none (see ``reasoning``)."""
        try:
            choices = sorted(data["choices"], key=lambda c: c["index"])
            message = choices[0]["message"]
            content = message["content"]
        except (IndexError, KeyError, TypeError) as exc:
            log.warning("chat_unparsable_answer", error=repr(exc))  # e.g. a content filter
            return ""
        separate = message.get("reasoning_content") or message.get("reasoning")
        return api_generation(content, self.args.think_end_token,
                              separate_reasoning=separate if isinstance(separate, str) else None,
                              finish_reason=choices[0].get("finish_reason"),
                              usage=data.get("usage"), none_answer=NONE_ANSWER)

    def batch_provider(self) -> OpenAIBatches:
        return OpenAIBatches(self, "/v1/chat/completions")

    async def batch_plan(self, requests: BatchRequests) -> BatchPlan:
        """Each conversation's online body and parser (chat_messages_plan)."""
        return chat_messages_plan(self, requests, self.payload, self.parse)

    def refusal(self, request: GenerationRequest) -> ItemError | None:
        """Why ``request`` cannot be sent (prompt text, not chat messages); None if it can."""
        if not isinstance(request.context, list) or not request.context:
            return ItemError(f"{self.name} takes chat messages: run the job with "
                             "--apply_chat_template")
        return None

    async def generate_until(self, requests: Sequence[GenerationRequest]) -> Answers[str]:
        jobs = []
        refusals: dict[int, ItemError] = {}
        for i, request in enumerate(requests):
            refusal = self.refusal(request)
            if refusal is not None:
                refusals[i] = refusal
                continue

            async def make(cost: Cost, request: GenerationRequest = request) -> list[str]:
                return [self.parse(await self._post(self.payload(request.context, request),
                                                    cost))]

            jobs.append(([i], make))
        answers = await self.fan_out(jobs, len(requests), RequestKind.GENERATE_UNTIL)
        for i, error in refusals.items():
            answers.results[i] = error
        return answers


class OpenAIChatBackend(LocalChatBackend):
    """OpenAI's own chat completions (OPENAI_API_KEY required)."""

    name: ClassVar[str] = "openai-chat-completions"
    default_base_url: ClassVar[str | None] = "https://api.openai.com/v1"
    api_key_required: ClassVar[bool] = True
    token_limit_key: ClassVar[str] = "max_completion_tokens"
    template_kwargs: ClassVar[bool] = False
    logprobs_reason: ClassVar[str] = (
        "chat endpoints return no prompt logprobs (OpenAI's chat completions API does not "
        "provide them), so loglikelihood (multiple_choice) and loglikelihood_rolling "
        "(perplexity) requests cannot be answered")

    def payload(self, messages: list[dict[str, str]], request: GenerationRequest
                ) -> dict[str, Any]:
        """lm-eval's ``OpenAIChatCompletion._create_payload``, its reasoning-model quirk
        included (any model name containing o1, o3, o4 or 5)."""
        out = super().payload(messages, request)
        model = self.args.model
        if "o1" in model or "5" in model or "o3" in model or "o4" in model:
            out.pop("stop")
            out["temperature"] = 1
        return out
