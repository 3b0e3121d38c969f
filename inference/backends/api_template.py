"""What every remote API backend shares (lm-eval's ``TemplateAPI``): arguments, tokenizer,
the pooled SDK client, concurrent fan-out of a batch's HTTP calls with per-item outcomes,
lm-eval's stop-sequence rule, and the model fingerprint.

Fingerprint (the answer-cache key): sha256 over the protocol family (completions, chat, Anthropic
messages), the normalised API root, the model name, the tokenizer's files (or its name) and
``revision``. Two workers pointing at the same server and model share cached answers; the same
model behind another URL does not (it is recomputed, never mixed). The server's weights are not
visible from here: when a server starts serving different weights under the same name and URL,
give a new ``revision=`` (any label) so that old answers are not reused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

from evalfleet.common.errors import EvalfleetError, FailedPreconditionError
from evalfleet.common.logging import get_logger
from evalfleet.inference.backends.api_args import ApiArgs
from evalfleet.inference.backends.api_http import MAX_DETAIL, Caller, RetryError
from evalfleet.inference.backends.api_tokenizer import ApiTokenizer
from evalfleet.inference.backends.base import (
    Answers,
    Backend,
    BackendArgumentError,
    Capabilities,
    Cost,
    GenerationParams,
    ItemError,
    ModelInfo,
)
from evalfleet.inference.backends.loading import library_versions
from evalfleet.inference.backends.reasoning import reasoning_fingerprint
from evalfleet.inference.backends.token_usage import with_call_usage

log = get_logger("backend.api")

T = TypeVar("T")

#: lm-eval's placeholder for a null answer (``LMEVAL_MODEL_NONE_ANSWER_PLACEHOLDER``).
NONE_ANSWER = os.environ.get("LMEVAL_MODEL_NONE_ANSWER_PLACEHOLDER", "")


def handle_stop_sequences(until: Sequence[str], eos: str | None) -> list[str]:
    """lm-eval's ``handle_stop_sequences``: ``until`` plus the EOS text when it is missing."""
    stop = list(until)
    if eos is not None and eos not in stop:
        stop.append(eos)
    return stop


def gen_extras(params: GenerationParams) -> dict[str, Any]:
    """The generation settings lm-eval passes through as ``**gen_kwargs`` (set ones only)."""
    extra: dict[str, Any] = {}
    if params.top_p is not None:
        extra["top_p"] = params.top_p
    if params.top_k is not None:
        extra["top_k"] = params.top_k
    if params.seed is not None:
        extra["seed"] = params.seed
    return extra


def remote_fingerprint(family: str, args: ApiArgs, tokenizer: ApiTokenizer | None) -> str:
    """The answer-cache key of a remote model (see the module docstring)."""
    key = json.dumps({"family": family, "api_root": args.base_url, "model": args.model,
                      "tokenizer": tokenizer.identity if tokenizer else None,
                      "revision": args.revision}, sort_keys=True)
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class RemoteBackend(Backend):
    """A model behind an HTTP API, called through an official SDK client.

    Subclasses set ``family`` and ``sdk``, build the client in :meth:`make_client` and say what
    they can answer in :meth:`capabilities`.
    """

    family: ClassVar[str]
    sdk: ClassVar[str]

    def __init__(self, args: ApiArgs, tokenizer: ApiTokenizer | None) -> None:
        self.args = args
        self.tokenizer = tokenizer
        self.caller = Caller(args.num_concurrent, args.max_retries,
                             api_root=args.base_url if args.adaptive_concurrency else None)
        self.client: Any = None
        self._fingerprint = reasoning_fingerprint(
            remote_fingerprint(self.family, args, tokenizer), args.think_end_token,
            args.enable_thinking)

    # ------------------------------------------------------------------ life cycle
    def make_client(self) -> Any:
        """The SDK's async client, its own retries off, its pool sized to num_concurrent."""
        raise NotImplementedError

    async def start(self) -> None:
        if self.client is None:
            self.client = self._new_client()

    def _new_client(self) -> Any:
        """:meth:`make_client`, its SDK's refusals (credentials, certificates) as one line."""
        try:
            return self.make_client()
        except EvalfleetError:
            raise
        except Exception as exc:  # noqa: BLE001 - the SDK's own error types vary by version
            detail = " ".join(str(exc).split())[:MAX_DETAIL]
            raise FailedPreconditionError(
                f"the {self.name} backend could not set up its {self.sdk} client "
                f"({type(exc).__name__}: {detail}); check model_args api_key, base_url, "
                "verify_certificate and ca_cert_path") from exc

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    # ------------------------------------------------------------------ description
    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    def model_info(self) -> ModelInfo:
        tok = self.tokenizer
        hf = tok.tok if tok is not None and tok.kind == "huggingface" else None
        return ModelInfo(
            backend=self.name, model_name=self.args.model, revision=self.args.revision,
            tokenizer=(self.args.tokenizer or self.args.model) if tok else "",
            max_length=self.args.max_length, fingerprint=self._fingerprint, dtype="",
            device=self.args.base_url, num_parameters=0,
            eot_token_id=(tok.eot_token_id or 0) if tok else 0,
            bos_token=getattr(hf, "bos_token", None), eos_token=tok.eos_string if tok else None,
            pad_token=getattr(hf, "pad_token", None), capabilities=self.capabilities(),
            library_versions=library_versions(self.sdk, "evalfleet"),
        )

    # ------------------------------------------------------------------ calls
    async def fan_out(self, jobs: Sequence[tuple[list[int], Callable[[Cost], Awaitable[list]]]],
                      n_items: int, what: str) -> Answers:
        """Run ``jobs`` concurrently (the caller bounds HTTP calls to num_concurrent).

        Each job is (the item positions it answers, a coroutine factory taking the batch's
        ``Cost`` and returning one outcome per position). A job that fails for good gives each
        of its items an ItemError (retryable when the failure was, e.g. 5xx after retries).
        """
        cost = Cost()
        results: list[Any] = [None] * n_items
        started = time.perf_counter()

        async def run(positions: list[int], make) -> None:
            try:  # the call's usage (every response it read) shared out over its answers
                outcomes = await with_call_usage(make(cost))
            except RetryError as exc:
                outcomes = [ItemError(f"{what}: {exc}", exc.failure.retryable)] * len(positions)
            except Exception as exc:  # noqa: BLE001 - an unreadable answer fails its items
                log.warning("unreadable_answer", what=what, error=unreadable(exc))
                outcomes = [ItemError(f"{what}: {unreadable(exc)}", True)] * len(positions)
            for pos, outcome in zip(positions, outcomes, strict=True):
                results[pos] = outcome

        await asyncio.gather(*(run(p, m) for p, m in jobs))
        cost.compute_seconds = time.perf_counter() - started
        return Answers(results, cost)

    async def http(self, make: Callable[[], Awaitable[T]], cost: Cost, what: str, *,
                   attempts: int | None = None) -> T:
        """One SDK call with retries (at most ``attempts`` tries), counted in ``cost``."""
        if self.client is None:
            self.client = self._new_client()
        return await self.caller.call(make, cost, what, attempts=attempts)


def unreadable(exc: BaseException) -> str:
    """One line for an answer that could not be read (not JSON, an unexpected shape, a
    transport error the SDK did not classify)."""
    detail = " ".join(str(exc).split())[:MAX_DETAIL] or "no detail"
    return (f"the server's answer could not be read ({type(exc).__name__}: {detail}); check "
            "that base_url is the server's API root (e.g. http://host:8000/v1)")


def require_api_key(args: ApiArgs, env: str, backend: str) -> str:
    """The API key, or a BackendArgumentError saying where to put it."""
    if args.api_key:
        return args.api_key
    raise BackendArgumentError(
        "api_key", f"the {backend} backend needs an API key: set {env} or pass api_key=...")
