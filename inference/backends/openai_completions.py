"""``local-completions`` and ``openai-completions``: an OpenAI-compatible /v1/completions
endpoint through the official ``openai`` client (lm-eval's ``LocalCompletionsAPI`` and
``OpenAICompletionsAPI``).

Payloads, tokenization, truncation and parsing are lm-eval 0.4.13's:

* loglikelihood: ``{"model", "prompt", "temperature": 0, "max_tokens": 1, "logprobs": 1,
  "seed", "echo": true}`` with the prompt as token ids (``tokenized_requests``, default) or as
  the decoded text; the continuation's logprobs are ``token_logprobs[ctxlen:-1]`` and a token
  is greedy when its logprob equals the largest of its ``top_logprobs``;
* loglikelihood_rolling: lm-eval's rolling windows of ``max_length - 2`` tokens, scored alike;
* generate_until: ``{"prompt", "model", "max_tokens", "temperature", "stop": until + [eos],
  "seed", ...}``, the context left-truncated to ``max_length - 1 - max_gen_toks`` tokens; the
  server's text is the answer.

Beyond lm-eval: without ``api_key`` (nor OPENAI_API_KEY) requests carry no Authorization
header. A server that refuses token-id prompts but takes text (llama-cpp-python's,
``transformers serve``, LM Studio answer HTTP 500 "Input should be a valid string") is sent
text from then on, as with ``tokenized_requests=false``, and the worker says so once (a
warning in its log, a "prompts ok" finding of the probe); the probe's first request finds out.
The server's prompt logprobs must pass the honesty probe
(:mod:`~evalfleet.inference.backends.logprob_probe`) when the worker starts, and again before
a loglikelihood batch or a new job once the last probe is ``probe_interval_s`` old; a server
that fails is generation-only. Every echoed answer is checked to hold one logprob per prompt
token, so a misaligned answer is an error, never a wrong number.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from evalfleet.common.errors import EvalfleetError, FailedPreconditionError, UnavailableError
from evalfleet.common.logging import get_logger
from evalfleet.common.request_kind import RequestKind
from evalfleet.inference.backends.api_args import ApiArgs, parse_api_args
from evalfleet.inference.backends.api_http import RetryError, openai_client
from evalfleet.inference.backends.api_template import (
    NONE_ANSWER,
    RemoteBackend,
    gen_extras,
    handle_stop_sequences,
    require_api_key,
    unreadable,
)
from evalfleet.inference.backends.api_tokenizer import ApiTokenizer, load_api_tokenizer
from evalfleet.inference.backends.base import (
    Answers,
    BackendArgumentError,
    BatchRequests,
    Capabilities,
    ChatRendering,
    ChatTemplateSupport,
    Conversation,
    Cost,
    GenerationRequest,
    ItemError,
    ProbeResult,
    TokenScores,
)
from evalfleet.inference.backends.chat_template import render_conversations, select_template
from evalfleet.inference.backends.logprob_probe import (
    ProbeRequestError,
    ProbeState,
    failed_findings,
    probe_server,
    summary,
)
from evalfleet.inference.backends.openai_batch import OpenAIBatches
from evalfleet.inference.backends.provider_batch import BatchApiMixin, BatchLine, BatchPlan
from evalfleet.inference.backends.reasoning import api_generation
from evalfleet.inference.backends.token_usage import add_usage, scores_usage
from evalfleet.inference.backends.windows import rolling_windows

log = get_logger("backend.completions")

#: Seconds a re-probe may hold up GetModelInfo; a slower one finishes before the next batch.
REFRESH_BUDGET_S = 5.0
LOGPROBS_REMEDY = (
    "serve the model with vLLM's OpenAI-compatible server (`vllm serve MODEL`, whose "
    "/v1/completions echoes correct prompt logprobs) and point local-completions at it, use "
    "another completions endpoint that passes the check, or run generative tasks only "
    "(e.g. gsm8k)")

_Window = tuple[list[int], int]  # (input ids after truncation, ctxlen)

#: Statuses that are never a refusal of the prompt's form (token ids): the server is down or
#: busy, the key is refused, the model or URL is wrong.
_NOT_ABOUT_THE_PROMPT = frozenset({0, 401, 403, 404, 408, 429, 502, 503, 504, 529})


def _sort_key(item: tuple[int, list[int]]) -> tuple[int, tuple[int, ...]]:
    """lm-eval's Collator order for API loglikelihood: longest first, then by tokens."""
    return -len(item[1]), tuple(item[1])


def parse_echo_scores(choice: dict[str, Any], n_inputs: int, ctxlen: int
                      ) -> TokenScores | ItemError:
    """lm-eval's ``LocalCompletionsAPI.parse_logprobs`` for one choice, per token, refusing a
    response whose echo does not line up with the prompt."""
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs")
    tops = logprobs.get("top_logprobs")
    if values is None:
        return ItemError("the server returned no logprobs for an echo request; it cannot "
                         "answer loglikelihood requests")
    if len(values) != n_inputs + 1:
        return ItemError(f"the server echoed {len(values)} logprobs for a prompt of {n_inputs} "
                         "tokens plus 1 generated: its tokenization differs from the "
                         "tokenizer's, or it does not echo the prompt")
    scored = values[ctxlen:-1]
    top = (tops or [])[ctxlen:-1]
    if any(v is None for v in scored) or len(top) != len(scored) or any(t is None for t in top):
        return ItemError("the server's echo lacks logprobs or top_logprobs for continuation "
                         "tokens")
    greedy = [v == max(t.values()) for v, t in zip(scored, top, strict=True)]
    return TokenScores(np.asarray(scored, np.float32), np.asarray(greedy, bool))


def parse_chunk_scores(data: dict[str, Any], windows: list[_Window]
                       ) -> list[TokenScores | ItemError]:
    """The scores of each window of one loglikelihood call from the server's answer."""
    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
    if len(choices) != len(windows):
        return [ItemError(f"the server answered {len(choices)} choices for "
                          f"{len(windows)} prompts")] * len(windows)
    return [parse_echo_scores(c, len(w[0]), w[1]) for c, w in zip(choices, windows, strict=True)]


class LocalCompletionsBackend(BatchApiMixin, RemoteBackend):
    """An OpenAI-compatible /v1/completions server (vLLM, llama.cpp, LM Studio, ...)."""

    name: ClassVar[str] = "local-completions"
    family: ClassVar[str] = "openai-completions"
    sdk: ClassVar[str] = "openai"
    default_base_url: ClassVar[str | None] = None
    default_tokenizer_backend: ClassVar[str | None] = "huggingface"
    api_key_required: ClassVar[bool] = False

    def __init__(self, args: ApiArgs, tokenizer: ApiTokenizer | None) -> None:
        super().__init__(args, tokenizer)
        self.probe = ProbeState()
        self._probe_lock: asyncio.Lock | None = None
        #: Set when the server refused token-id prompts and took text: what the user is told.
        self.text_prompts_note: str | None = None
        self._ids_answered = False  # the server has answered a token-id prompt

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any], *,
                        batch_size: int | str = 1) -> LocalCompletionsBackend:
        args = parse_api_args(cls.name, model_args, batch_size=batch_size,
                              default_base_url=cls.default_base_url,
                              default_tokenizer_backend=cls.default_tokenizer_backend)
        if args.max_gen_toks != 256:
            raise BackendArgumentError(
                "max_gen_toks", "set the generation budget per job with --gen_kwargs "
                                "max_gen_toks=N (the coordinator sends it with each request)")
        if cls.api_key_required:
            require_api_key(args, "OPENAI_API_KEY", cls.name)
        return cls(args, load_api_tokenizer(args))

    def make_client(self) -> Any:
        return openai_client(self.args)

    # ------------------------------------------------------------------ the probe
    async def start(self) -> None:
        await super().start()
        if self.tokenizer is not None:
            await self._probe_now()
            result = self.probe.result
            log.info("logprob_probe", base_url=self.args.base_url, model=self.args.model,
                     passed=bool(result and result.passed),
                     findings=list(result.findings) if result else [])

    async def refresh(self) -> None:
        """Re-probe (the coordinator asks for model info when a job is created) when the
        last probe is older than probe_interval_s; a slow probe finishes in the background."""
        if self.tokenizer is None or not self.probe.stale(self.args.probe_interval_s):
            return
        task = asyncio.ensure_future(self._probe_if_stale())
        try:
            await asyncio.wait_for(asyncio.shield(task), REFRESH_BUDGET_S)
        except TimeoutError:
            log.warning("logprob_probe_slow", budget_s=REFRESH_BUDGET_S)

    async def _probe_if_stale(self) -> None:
        if self._probe_lock is None:
            self._probe_lock = asyncio.Lock()
        async with self._probe_lock:
            if self.probe.stale(self.args.probe_interval_s):
                await self._probe_now()

    async def _probe_now(self) -> None:
        tok = self.tokenizer
        assert tok is not None
        try:
            result = await probe_server(self._probe_request,
                                        lambda text: tok.encode(text))
        except Exception:
            if self.probe.result is None:  # at start: the worker does not start
                raise
            # a re-probe that could not run (server down, ...) keeps the last verdict
            log.exception("logprob_probe_error")
            return
        if self.text_prompts_note:
            result = ProbeResult(result.passed,
                                 (f"prompts ok: {self.text_prompts_note}", *result.findings))
        self.probe.record(result)

    async def _probe_request(self, text: str, ids: list[int]) -> dict[str, Any]:
        try:
            return await self._post_prompt(self._score_payload, [ids], lambda: text, Cost(),
                                           "logprob probe")
        except RetryError as exc:
            failure = exc.failure
            if failure.status in (0, 429, 503, 529):  # down or overloaded: no verdict yet
                raise UnavailableError(
                    f"the server at {self.args.base_url} did not answer the logprob probe: "
                    f"{exc}; check base_url and that the server is running") from exc
            if failure.status in (401, 403):
                raise BackendArgumentError(
                    "api_key", f"the server at {self.args.base_url} refused the key: {exc}"
                ) from exc
            if failure.status == 404:
                raise BackendArgumentError(
                    "model", f"{exc} (asked for model {self.args.model!r} at "
                             f"{self.args.base_url}/completions; the API root usually ends "
                             "in /v1)") from exc
            raise ProbeRequestError(str(exc)) from exc
        except EvalfleetError:
            raise
        except Exception as exc:  # noqa: BLE001 - not JSON, an unexpected shape, ...
            raise ProbeRequestError(unreadable(exc)) from exc

    # ------------------------------------------------------------------ description
    def _logprobs_unavailable(self) -> str:
        """Why loglikelihood cannot be answered correctly; empty when it can."""
        if self.tokenizer is None:
            return ("the worker has no tokenizer (tokenizer_backend=none), and evalfleet "
                    "needs the served model's tokenizer to split context from continuation")
        result = self.probe.result
        if result is None:
            return "the logprob honesty probe has not run"
        if not result.passed:
            failed = failed_findings(result)
            if failed and failed[0].startswith("request FAILED"):
                return ("the server refused a prompt-logprobs request (echo + logprobs), so "
                        "its prompt logprobs cannot be checked or used: " + summary(failed))
            return ("the server's prompt logprobs are wrong or missing, so every "
                    "loglikelihood would be wrong: " + summary(failed))
        return ""

    def _remedy(self) -> str:
        if self.tokenizer is None:
            return ("pass tokenizer=<local path or hub id of the served model's tokenizer> "
                    "(tokenizer_backend=huggingface), or run generative tasks only")
        return LOGPROBS_REMEDY

    def capabilities(self) -> Capabilities:
        reason = self._logprobs_unavailable()
        hf = self.tokenizer.tok if self.tokenizer and self.tokenizer.kind == "huggingface" \
            else None
        chat = ChatTemplateSupport.RENDER if getattr(hf, "chat_template", None) \
            else ChatTemplateSupport.NONE
        return Capabilities(
            loglikelihood=not reason, loglikelihood_rolling=not reason, generate_until=True,
            logprobs_unavailable_reason=reason, logprobs_remedy=self._remedy() if reason else "",
            chat_template=chat, max_context_tokens=self.args.max_length,
            max_concurrent_batches=self.args.num_concurrent,
            probe=self.probe.result, batch_api=self.args.batch_api)

    # ------------------------------------------------------------------ HTTP
    def _score_payload(self, prompt: Any) -> dict[str, Any]:
        """lm-eval's ``_create_payload(generate=False)``."""
        return {"model": self.args.model, "prompt": prompt, "temperature": 0, "max_tokens": 1,
                "logprobs": 1, "seed": self.args.seed, "echo": True}

    def _prompt(self, token_lists: list[list[int]]) -> Any:
        """lm-eval's ``create_message`` with ``tokenized_requests=false``: the decoded text (a
        str for one)."""
        assert self.tokenizer is not None
        texts = [self.tokenizer.decode(ids) for ids in token_lists]
        return texts[0] if self.args.batch_size <= 1 else texts

    async def _post_prompt(self, build: Callable[[Any], dict[str, Any]], ids_prompt: Any,
                           text_prompt: Callable[[], Any], cost: Cost, what: str
                           ) -> dict[str, Any]:
        """POST ``build(prompt)`` with the prompt as token ids (``tokenized_requests``) or as
        text. A server that refuses the token ids but answers the text (llama-cpp-python's,
        ``transformers serve``, LM Studio) is sent text from then on, and the user is told.
        Until the server has answered token ids, a refusal is not retried (the text is tried
        instead); when both fail, the text's failure is raised (it is what remains to fix)."""
        if not self.args.tokenized_requests:
            return await self._post(build(text_prompt()), cost, what)
        if not self._ids_answered:
            try:
                data = await self._post(build(ids_prompt), cost, what, attempts=1)
            except RetryError as exc:
                if exc.failure.status not in _NOT_ABOUT_THE_PROMPT:
                    data = await self._post(build(text_prompt()), cost, what)
                    self._send_text_from_now_on(exc)
                    return data
                if not exc.failure.retryable:
                    raise
                # busy or unreachable: retried below as any request
            else:
                self._ids_answered = True
                return data
        data = await self._post(build(ids_prompt), cost, what)
        self._ids_answered = True
        return data

    def _send_text_from_now_on(self, refusal: RetryError) -> None:
        """The server takes text prompts only: send text (``tokenized_requests=false``)."""
        if not self.args.tokenized_requests:
            return
        self.args.tokenized_requests = False
        self.text_prompts_note = (
            f"the server at {self.args.base_url} refuses prompts as token ids "
            f"({refusal.failure.message}) and takes them as text, so prompts are sent as text "
            "from now on (as with model_args tokenized_requests=false)")
        log.warning("text_prompts_only", base_url=self.args.base_url,
                    message=self.text_prompts_note)

    async def _post(self, payload: dict[str, Any], cost: Cost, what: str, *,
                    attempts: int | None = None) -> dict[str, Any]:
        body = dict(payload)
        model, prompt = body.pop("model"), body.pop("prompt")

        async def send():
            return await self.client.completions.with_raw_response.create(
                model=model, prompt=prompt, extra_body=body)

        raw = await self.http(send, cost, what, attempts=attempts)
        data = raw.http_response.json()
        add_usage(cost, data.get("usage"))  # every token kind, cached and reasoning too
        return data

    # ------------------------------------------------------------------ loglikelihood
    async def _ensure_logprobs(self) -> str:
        """Re-probe when stale; the reason loglikelihood is refused (empty when it is not)."""
        if self.tokenizer is not None and self.probe.stale(self.args.probe_interval_s):
            await self._probe_if_stale()
        return self._logprobs_unavailable()

    def _window(self, ctx: list[int], cont: list[int]) -> _Window | ItemError:
        """lm-eval's ``batch_loglikelihood_requests`` truncation to ``max_length - 1``.

        A whitespace-only context (no tokens; lm-eval fails an assertion there) is the prefix
        token, as the hf backend takes it."""
        assert self.tokenizer is not None
        if not ctx:
            ctx = [self.tokenizer.prefix_token_id]
        limit = self.args.max_tokens_in_window
        ctxlen = len(ctx) - max(0, len(ctx) + len(cont) - limit)
        if ctxlen <= 0:
            return ItemError(f"continuation of {len(cont)} tokens leaves no context within "
                             f"max_length {self.args.max_length}; raise model_args max_length "
                             "if the server's model allows it")
        return (ctx + cont)[-limit:], ctxlen

    async def _score_windows(self, windows: Sequence[_Window | ItemError | None]
                             ) -> Answers[TokenScores]:
        """Score each window (None: an empty continuation, scored 0 as lm-eval does)."""
        empty = TokenScores(np.zeros(0, np.float32), np.zeros(0, bool))
        todo = sorted(((i, w[0]) for i, w in enumerate(windows) if isinstance(w, tuple)),
                      key=_sort_key)
        size = max(1, self.args.batch_size)
        jobs = []
        for start in range(0, len(todo), size):
            chunk = [i for i, _ in todo[start:start + size]]

            async def make(cost: Cost, chunk: list[int] = chunk) -> list:
                inputs = [windows[i][0] for i in chunk]  # type: ignore[index]
                data = await self._post_prompt(self._score_payload, inputs,
                                               lambda: self._prompt(inputs), cost,
                                               RequestKind.LOGLIKELIHOOD)
                return parse_chunk_scores(data, [windows[i] for i in chunk])  # type: ignore

            jobs.append((chunk, make))
        answers = await self.fan_out(jobs, len(windows), RequestKind.LOGLIKELIHOOD)
        answers.results = [r if isinstance(w, tuple) else (w or empty)
                           for r, w in zip(answers.results, windows, strict=True)]
        return answers

    def _prepare_pairs(self, requests: Sequence[tuple[str, str]]
                       ) -> list[_Window | ItemError | None]:
        assert self.tokenizer is not None
        out: list[_Window | ItemError | None] = []
        for context, continuation in requests:
            ctx, cont = self.tokenizer.encode_request(context, continuation)
            out.append(self._window(ctx, cont) if cont else None)
        return out

    async def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> Answers[TokenScores]:
        refused = await self._ensure_logprobs()
        if refused:
            return Answers([ItemError(refused)] * len(requests))
        windows = await asyncio.to_thread(self._prepare_pairs, requests)
        return await self._score_windows(windows)

    def _prepare_rolling(self, texts: Sequence[str]) -> tuple[list[_Window | ItemError], list]:
        assert self.tokenizer is not None
        windows: list[_Window | ItemError] = []
        counts = []
        for text in texts:
            pairs = rolling_windows(self.tokenizer.encode(text), self.tokenizer.prefix_token_id,
                                    self.args.max_tokens_in_window - 1)
            counts.append(len(pairs))
            windows.extend(self._window(ctx, cont) for ctx, cont in pairs)
        return windows, counts

    async def loglikelihood_rolling(self, texts: Sequence[str]) -> Answers[TokenScores]:
        refused = await self._ensure_logprobs()
        if refused:
            return Answers([ItemError(refused)] * len(texts))
        windows, counts = await asyncio.to_thread(self._prepare_rolling, texts)
        answers = await self._score_windows(windows)
        out: list[TokenScores | ItemError] = []
        pos = 0
        for n in counts:
            parts = answers.results[pos:pos + n]
            pos += n
            error = next((p for p in parts if isinstance(p, ItemError)), None)
            out.append(error or TokenScores(
                np.concatenate([p.logprobs for p in parts]) if parts else np.zeros(0, np.float32),
                np.concatenate([p.greedy for p in parts]) if parts else np.zeros(0, bool),
                usage=scores_usage(parts)))
        return Answers(out, answers.cost)

    # ------------------------------------------------------------------ generation
    def _gen_payload(self, prompt: Any, request: GenerationRequest) -> dict[str, Any]:
        """lm-eval's ``_create_payload(generate=True)``."""
        params = request.params
        eos = self.tokenizer.eos_string if self.tokenizer else self.args.eos_string
        return {"prompt": prompt, "model": self.args.model, "max_tokens": params.max_gen_toks,
                "temperature": params.temperature,
                "stop": handle_stop_sequences(params.until, eos), "seed": self.args.seed,
                **gen_extras(params)}

    def _gen_prompt(self, request: GenerationRequest) -> Any:
        """Token ids left-truncated to ``max_length - 1 - max_gen_toks``, or the text."""
        if not self.args.tokenized_requests:
            return request.context
        assert self.tokenizer is not None and isinstance(request.context, str)
        ids = self.tokenizer.encode(request.context, add_special_tokens=self.args.add_bos_token)
        keep = self.args.max_tokens_in_window - request.params.max_gen_toks
        return ids[-keep:]

    def _parse_generations(self, data: dict[str, Any], n: int) -> list[Any]:
        """The generations of one call of ``n`` prompts from the server's answer."""
        texts: list[Any] = [None] * len(data.get("choices") or [])
        # usage is the call's: an item's own only when it is alone in the call
        usage = data.get("usage") if n == 1 else None
        for choice in data.get("choices") or []:
            texts[choice["index"]] = api_generation(
                choice.get("text"), self.args.think_end_token,
                separate_reasoning=None, finish_reason=choice.get("finish_reason"),
                usage=usage, none_answer=NONE_ANSWER)
        if len(texts) != n:
            return [ItemError(f"the server answered {len(texts)} choices for "
                              f"{n} prompts")] * n
        return texts

    def _gen_refusal(self, req: GenerationRequest) -> ItemError | None:
        """Why ``req`` cannot be sent (chat messages, no room for the prompt); None if it can."""
        if not isinstance(req.context, str):
            return ItemError(f"{self.name} takes prompt text; chat templates are "
                             "rendered by the worker (ApplyChatTemplate)")
        if req.params.max_gen_toks >= self.args.max_tokens_in_window:
            return ItemError(
                f"gen_kwargs.max_gen_toks {req.params.max_gen_toks} leaves no room for the "
                f"prompt within max_length {self.args.max_length}")
        return None

    async def generate_until(self, requests: Sequence[GenerationRequest]) -> Answers[str]:
        refusals: dict[int, ItemError] = {}
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            refusal = self._gen_refusal(req)
            if refusal is not None:
                refusals[i] = refusal
            else:
                groups.setdefault(req.params.key(), []).append(i)
        prompts = await asyncio.to_thread(
            lambda: {i: self._gen_prompt(requests[i]) for idx in groups.values() for i in idx})
        size = max(1, self.args.batch_size)
        jobs = []
        for idxs in groups.values():
            order = sorted(idxs, key=lambda i: -len(requests[i].context))
            for start in range(0, len(order), size):
                chunk = order[start:start + size]

                async def make(cost: Cost, chunk: list[int] = chunk) -> list:
                    texts = [requests[i].context for i in chunk]
                    data = await self._post_prompt(
                        lambda prompt: self._gen_payload(prompt, requests[chunk[0]]),
                        [prompts[i] for i in chunk],
                        lambda: texts if self.args.batch_size > 1 else texts[0],
                        cost, RequestKind.GENERATE_UNTIL)
                    return self._parse_generations(data, len(chunk))

                jobs.append((chunk, make))
        answers = await self.fan_out(jobs, len(requests), RequestKind.GENERATE_UNTIL)
        for i, error in refusals.items():
            answers.results[i] = error
        return answers

    # ------------------------------------------------------------------ provider batches
    def batch_provider(self) -> OpenAIBatches:
        return OpenAIBatches(self, "/v1/completions")

    def _one_prompt(self, ids: list[int], text: Callable[[], Any]) -> Any:
        """The ``prompt`` of the online call for one item: its token ids as a one-prompt batch
        (``tokenized_requests``), else ``text()`` (the online path's text prompt)."""
        return [ids] if self.args.tokenized_requests else text()

    def _gen_text(self, request: GenerationRequest) -> Any:
        """The online path's text prompt of one generation (a list of one with batch_size > 1)."""
        return request.context if self.args.batch_size <= 1 else [request.context]

    async def batch_plan(self, requests: BatchRequests) -> BatchPlan:
        """Each item's online body (one item per body, as with ``batch_size=1``) and parser."""
        plan = BatchPlan()
        if requests.kind == RequestKind.LOGLIKELIHOOD:
            refused = await self._ensure_logprobs()
            if refused:
                raise FailedPreconditionError(f"loglikelihood: {refused}")
            windows = await asyncio.to_thread(self._prepare_pairs, requests.items)
            for i, w in enumerate(windows):
                if isinstance(w, tuple):
                    body = self._score_payload(
                        self._one_prompt(w[0], lambda w=w: self._prompt([w[0]])))
                    plan.lines[i] = BatchLine(
                        body, lambda data, w=w: parse_chunk_scores(data, [w])[0])
                else:
                    plan.local[i] = w or TokenScores(np.zeros(0, np.float32), np.zeros(0, bool))
            return plan
        if requests.kind != RequestKind.GENERATE_UNTIL:
            raise FailedPreconditionError(f"{requests.kind} requests have no provider batch in "
                                          f"the {self.name} backend; send them online")
        items: Sequence[GenerationRequest] = requests.items
        for i, req in enumerate(items):
            refusal = self._gen_refusal(req)
            if refusal is not None:
                plan.local[i] = refusal
        prompts = await asyncio.to_thread(
            lambda: {i: self._gen_prompt(r) for i, r in enumerate(items) if i not in plan.local})
        for i, prompt in prompts.items():
            plan.lines[i] = BatchLine(
                self._gen_payload(self._one_prompt(prompt, lambda i=i: self._gen_text(items[i])),
                                  items[i]),
                lambda data: self._parse_generations(data, 1)[0])
        return plan

    # ------------------------------------------------------------------ chat templates
    async def apply_chat_template(self, conversations: Sequence[Conversation],
                                  template_name: str | None = None) -> ChatRendering:
        hf = self.tokenizer.tok if self.tokenizer and self.tokenizer.kind == "huggingface" \
            else None
        if hf is None or not getattr(hf, "chat_template", None):
            raise BackendArgumentError(
                "tokenizer", "no chat template: give a huggingface tokenizer that has one")
        template = select_template(hf.chat_template, template_name)
        extra = {} if self.args.enable_thinking is None else \
            {"enable_thinking": self.args.enable_thinking}
        prompts = await asyncio.to_thread(render_conversations, hf, conversations, extra)
        return ChatRendering(prompts, template, hashlib.sha256(template.encode()).hexdigest())


class OpenAICompletionsBackend(LocalCompletionsBackend):
    """OpenAI's own /v1/completions (tiktoken tokenizer, OPENAI_API_KEY required)."""

    name: ClassVar[str] = "openai-completions"
    default_base_url: ClassVar[str | None] = "https://api.openai.com/v1"
    default_tokenizer_backend: ClassVar[str | None] = "tiktoken"
    api_key_required: ClassVar[bool] = True
