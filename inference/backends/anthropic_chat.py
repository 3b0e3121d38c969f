"""``anthropic-chat`` (aliases ``anthropic-chat-completions`` and the seed's ``anthropic``):
Anthropic's Messages API through the official ``anthropic`` client (lm-eval's
``AnthropicChat``).

Generation only, one conversation per request, ``ANTHROPIC_API_KEY`` (or ``api_key=``).
Payload as lm-eval 0.4.13 builds it: a leading system message becomes ``system``; every other
message is ``{"role", "content": [{"type": "text", "text": ...}]}``; ``max_tokens``,
``temperature``, ``stop_sequences`` (the task's ``until`` without whitespace-only entries; when
none is left, ``"\\n\\nHuman:"``). The answer is the text of the response's content blocks;
its ``thinking`` blocks (extended thinking) are kept apart as the reasoning.
The Messages API returns no logprobs: loglikelihood tasks are refused before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from evalfleet.common.logging import get_logger
from evalfleet.common.request_kind import RequestKind
from evalfleet.inference.backends.anthropic_batch import AnthropicBatches
from evalfleet.inference.backends.api_args import parse_api_args
from evalfleet.inference.backends.api_http import pooled_client
from evalfleet.inference.backends.api_template import (
    RemoteBackend,
    gen_extras,
    handle_stop_sequences,
    require_api_key,
)
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
from evalfleet.inference.backends.openai_chat import (
    LocalChatBackend,
    chat_messages_plan,
    refuse_scoring,
)
from evalfleet.inference.backends.provider_batch import BatchApiMixin, BatchPlan
from evalfleet.inference.backends.reasoning import GeneratedText, api_generation
from evalfleet.inference.backends.token_usage import add_usage

log = get_logger("backend.anthropic")

DEFAULT_STOP = "\n\nHuman:"
LOGPROBS_REASON = ("chat endpoints return no prompt logprobs (Anthropic's Messages API returns "
                   "no logprobs at all), so loglikelihood (multiple_choice) and "
                   "loglikelihood_rolling (perplexity) requests cannot be answered")
LOGPROBS_REMEDY = ("run generative tasks only (e.g. gsm8k with --apply_chat_template), or "
                   "evaluate multiple-choice tasks on a model served with prompt logprobs (hf, "
                   "vllm, or local-completions against vLLM's server)")


class AnthropicChatBackend(BatchApiMixin, RemoteBackend):
    """Claude models through the Messages API."""

    name: ClassVar[str] = "anthropic-chat"
    family: ClassVar[str] = "anthropic-messages"
    sdk: ClassVar[str] = "anthropic"

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any], *,
                        batch_size: int | str = 1) -> AnthropicChatBackend:
        args = parse_api_args(cls.name, model_args, batch_size=batch_size,
                              default_base_url="https://api.anthropic.com",
                              default_tokenizer_backend=None, tokenized_default=False,
                              api_key_env="ANTHROPIC_API_KEY")
        if args.tokenizer_backend is not None:
            raise BackendArgumentError("tokenizer_backend", "the Messages API takes messages; "
                                                            "no tokenizer is used (omit it)")
        if args.max_gen_toks != 256:
            raise BackendArgumentError(
                "max_gen_toks", "set the generation budget per job with --gen_kwargs "
                                "max_gen_toks=N (the coordinator sends it with each request)")
        if args.enable_thinking is not None:
            raise BackendArgumentError(
                "enable_thinking", "the Messages API has no chat template switch (Claude's "
                                   "extended thinking is not requested by evalfleet); drop it")
        require_api_key(args, "ANTHROPIC_API_KEY", cls.name)
        args.batch_size = 1
        # The client appends /v1/messages itself: its base is the host root.
        if args.base_url.endswith("/v1"):
            args.base_url = args.base_url[:-3]
        return cls(args, None)

    def make_client(self) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(
            api_key=self.args.api_key, base_url=self.args.base_url, max_retries=0,
            timeout=self.args.timeout, default_headers=self.args.header or None,
            http_client=pooled_client(anthropic.DefaultAsyncHttpxClient,
                                      self.args.num_concurrent, self.args.timeout,
                                      self.args.verify))

    def capabilities(self) -> Capabilities:
        return Capabilities(
            loglikelihood=False, loglikelihood_rolling=False, generate_until=True,
            logprobs_unavailable_reason=LOGPROBS_REASON, logprobs_remedy=LOGPROBS_REMEDY,
            chat_only=True, chat_template=ChatTemplateSupport.MESSAGES,
            max_concurrent_batches=self.args.num_concurrent, batch_api=self.args.batch_api)

    async def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> Answers[TokenScores]:
        return refuse_scoring(len(requests), LOGPROBS_REASON)

    async def loglikelihood_rolling(self, texts: Sequence[str]) -> Answers[TokenScores]:
        return refuse_scoring(len(texts), LOGPROBS_REASON)

    def payload(self, messages: list[dict[str, str]], request: GenerationRequest
                ) -> dict[str, Any]:
        """lm-eval's ``AnthropicChat._create_payload``."""
        system = messages[0].get("content") if messages[0].get("role") == "system" else None
        if system:
            messages = messages[1:]
        cleaned = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                   for m in messages]
        params = request.params
        stop = [s for s in handle_stop_sequences(params.until, self.args.eos_string)
                if s and s.strip()] or [self.args.eos_string or DEFAULT_STOP]
        out = {"messages": cleaned, "model": self.args.model, "max_tokens": params.max_gen_toks,
               "temperature": params.temperature, "stop_sequences": stop, **gen_extras(params)}
        if system:
            out["system"] = system
        return out

    async def _post(self, payload: dict[str, Any], cost: Cost) -> dict[str, Any]:
        body = dict(payload)
        model, messages, max_tokens = body.pop("model"), body.pop("messages"), \
            body.pop("max_tokens")

        async def send():
            return await self.client.messages.with_raw_response.create(
                model=model, messages=messages, max_tokens=max_tokens, extra_body=body)

        raw = await self.http(send, cost, RequestKind.GENERATE_UNTIL)
        data = raw.http_response.json()
        add_usage(cost, data.get("usage"))  # every token kind, cached and reasoning too
        return data

    logprobs_reason: ClassVar[str] = LOGPROBS_REASON
    refusal = LocalChatBackend.refusal

    def batch_provider(self) -> AnthropicBatches:
        return AnthropicBatches(self)

    async def batch_plan(self, requests: BatchRequests) -> BatchPlan:
        """Each conversation's online Messages body and parser (chat_messages_plan)."""
        return chat_messages_plan(
            self, requests, self.payload,
            lambda data: anthropic_answer(data, self.args.think_end_token))

    async def generate_until(self, requests: Sequence[GenerationRequest]) -> Answers[str]:
        jobs = []
        refusals: dict[int, ItemError] = {}
        for i, request in enumerate(requests):
            refusal = self.refusal(request)
            if refusal is not None:
                refusals[i] = refusal
                continue

            async def make(cost: Cost, request: GenerationRequest = request) -> list[str]:
                return [anthropic_answer(
                    await self._post(self.payload(request.context, request), cost),
                    self.args.think_end_token)]

            jobs.append(([i], make))
        answers = await self.fan_out(jobs, len(requests), RequestKind.GENERATE_UNTIL)
        for i, error in refusals.items():
            answers.results[i] = error
        return answers


def anthropic_answer(data: dict[str, Any], think_end_token: str | None) -> GeneratedText:
    """A Messages API response as an answer: its text blocks (lm-eval's), its ``thinking``
    blocks as the reasoning, ``stop_reason`` "max_tokens" as the length limit."""
    blocks = data.get("content") or []
    text = "".join(b.get("text", "") for b in blocks if b.get("type", "text") == "text")
    thinking = "".join(b.get("thinking", "") for b in blocks if b.get("type") == "thinking")
    return api_generation(text, think_end_token, separate_reasoning=thinking or None,
                          finish_reason=data.get("stop_reason"), usage=data.get("usage"))
