"""HTTP calls of the remote backends: a bounded connection pool, retries with backoff that
honour ``Retry-After``, and what each call cost.

The official clients (``openai``, ``anthropic``) are used with their own retries off, so that
every attempt, retry and second spent throttled is counted here and reported in the batch's
``Cost`` (the coordinator turns it into job events). The backoff is lm-eval's
(``wait_exponential(multiplier=0.5, min=1, max=10)``, ``max_retries`` attempts); a 429 or 503
that says how long to wait (``Retry-After``, ``retry-after-ms``) is waited that long instead.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from evalfleet.common.logging import get_logger
from evalfleet.inference.backends.base import Cost
from evalfleet.inference.backends.concurrency import Limiter, shared_limiter

log = get_logger("backend.http")

T = TypeVar("T")

#: Statuses worth another try: timeouts, conflicts, rate limits, server errors.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
#: Statuses that mean "slow down" (rate limited; Anthropic's 529 overloaded).
THROTTLE_STATUS = frozenset({429, 529})
#: Characters of a server's error message kept in an error (they can hold whole tracebacks).
MAX_DETAIL = 300
#: Never wait longer than this for one Retry-After; a longer one fails the item (retryable).
MAX_RETRY_AFTER_S = 120.0


def http_module():
    """The httpx module the official clients are built on (``httpx2`` in newer releases)."""
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("neither httpx2 nor httpx is installed (the openai client needs one)")


def pooled_client(client_cls: type, num_concurrent: int, timeout_s: float,
                  verify: bool | str) -> Any:
    """An async HTTP client for an official SDK whose pool holds ``num_concurrent``
    connections (``client_cls``: the SDK's ``DefaultAsyncHttpxClient``)."""
    httpx = http_module()
    limits = httpx.Limits(max_connections=num_concurrent,
                          max_keepalive_connections=num_concurrent)
    return client_cls(limits=limits, timeout=httpx.Timeout(timeout_s), verify=verify)


#: The key handed to the ``openai`` client when there is none (it refuses to start without one);
#: requests carrying it lose their Authorization header before they are sent.
NO_KEY = "evalfleet-no-api-key"


async def _drop_placeholder_auth(request: Any) -> None:
    """httpx request hook: no key, no Authorization header (a local server has no auth)."""
    if request.headers.get("authorization") == f"Bearer {NO_KEY}":
        del request.headers["authorization"]


def openai_client(args: Any) -> Any:
    """The official ``openai`` SDK's async client for a remote backend's ``ApiArgs``: no SDK
    retries (ours count and report them), the backend's timeout, headers and TLS check, and a
    pool of ``num_concurrent`` connections. Without ``api_key`` requests carry no
    Authorization header (lm-eval's local backends need no key)."""
    import openai

    http_client = pooled_client(openai.DefaultAsyncHttpxClient, args.num_concurrent,
                                args.timeout, args.verify)
    if not args.api_key:
        http_client.event_hooks["request"].append(_drop_placeholder_auth)
    return openai.AsyncOpenAI(
        api_key=args.api_key or NO_KEY, base_url=args.base_url, max_retries=0,
        timeout=args.timeout, default_headers=args.header or None, http_client=http_client)


@dataclass(frozen=True)
class Failure:
    """An HTTP attempt that failed: its status (0 for no response), whether to retry, and how
    long the server asked us to wait."""

    status: int
    message: str
    retryable: bool
    retry_after_s: float | None = None


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (delta seconds or an HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def classify(exc: BaseException) -> Failure | None:
    """A Failure for an SDK's API error (openai and anthropic share the shape), else None."""
    response = getattr(exc, "response", None)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        body = getattr(exc, "body", None)
        detail = condense(" ".join((_error_detail(body) or str(exc)).split()))
        if len(detail) > MAX_DETAIL:
            detail = detail[:MAX_DETAIL] + "..."
        return Failure(status, f"HTTP {status}: {detail}", status in RETRYABLE_STATUS,
                       retry_after_seconds(getattr(response, "headers", None)))
    name = type(exc).__name__
    if name in ("APITimeoutError", "APIConnectionError") or isinstance(
            exc, (ConnectionError, TimeoutError)):
        cause = exc.__cause__ or exc
        return Failure(0, f"{name}: {cause}", True)
    return None


_TOKEN_LIST = re.compile(r"\[+\s*-?\d+(?:\s*,\s*-?\d+){3,}[^\]]*\]+")
_INPUT_VALUE = re.compile(r"input_value=.*?(?=, input_type=)")


_VALIDATION_MSG = re.compile(r"""['"]msg['"]:\s*(?:'([^']*)'|"([^"]*)")""")
_VALIDATION_HEAD = re.compile(r"^\d+ validation errors?\b")
_TRACEBACK = re.compile(r"\s*(?:Traceback \(most recent call last\):|File \").*$")


def without_token_lists(detail: str) -> str:
    """A server's error message without the prompt's token ids it may quote (pydantic's
    ``input_value=[[1, 2, ...]]``): lists of four or more numbers become ``[...]``."""
    return _TOKEN_LIST.sub("[...]", _INPUT_VALUE.sub("input_value=...", detail))


def condense(detail: str) -> str:
    """A server's error message as one short line: a validation error's distinct messages
    (llama-cpp-python's server quotes each error's input and a traceback), no traceback, no
    token ids."""
    messages = [a or b for a, b in _VALIDATION_MSG.findall(detail)]
    if messages:
        head = _VALIDATION_HEAD.match(detail)
        said = "; ".join(dict.fromkeys(messages))
        return f"{head.group(0)}: {said}" if head else said
    return without_token_lists(_TRACEBACK.sub("", detail))


def _error_detail(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):  # OpenAI's {"error": {"message"}}, FastAPI's {"detail"}
            return str(err.get("message") or err.get("detail") or err)
        return str(err)
    return str(body) if body else ""


class RetryError(Exception):
    """An HTTP call that failed for good (every attempt, or a status not worth retrying)."""

    def __init__(self, failure: Failure, attempts: int) -> None:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{failure.message}{tries}")
        self.failure = failure
        self.attempts = attempts


def backoff_seconds(attempt: int) -> float:
    """lm-eval's tenacity ``wait_exponential(multiplier=0.5, min=1, max=10)`` after the
    ``attempt``-th failed attempt (1-based)."""
    return min(10.0, max(1.0, 0.5 * 2 ** (attempt - 1)))


#: Statuses that make the adaptive limiter cut: rate limits, overload, gateway timeouts.
CUT_STATUS = frozenset({408, 429, 503, 504, 529})
#: Statuses whose retries use up no try while the endpoint answers other calls meanwhile.
FREE_RETRY_STATUS = frozenset({429, 503, 529})


def cuts_concurrency(failure: Failure) -> bool:
    """Whether ``failure`` says the endpoint is overloaded (429/503/timeout): fewer calls."""
    return failure.status in CUT_STATUS or (failure.status == 0 and "Timeout" in failure.message)


class Caller:
    """Runs SDK calls with lm-eval's retry policy and at most ``num_concurrent`` in flight:
    a fixed number, or with ``api_root`` an adaptive limit under that ceiling, shared by
    every Caller of the process on the same API root (see :mod:`.concurrency`)."""

    def __init__(self, num_concurrent: int, max_attempts: int, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 api_root: str | None = None) -> None:
        self.num_concurrent = num_concurrent
        self.max_attempts = max(1, max_attempts)
        self.api_root = api_root
        self._fixed = Limiter(num_concurrent, adaptive=False)
        self._sleep = sleep

    @property
    def limiter(self) -> Limiter:
        """The limiter of this call's event loop (the shared adaptive one with ``api_root``)."""
        if self.api_root is None:
            return self._fixed
        return shared_limiter(self.api_root, self.num_concurrent)

    async def call(self, make: Callable[[], Awaitable[T]], cost: Cost, what: str, *,
                   attempts: int | None = None) -> T:
        """``await make()``, retried (at most ``attempts`` tries, else ``max_attempts``); every
        attempt, retry and throttled second goes to ``cost``. A 429/503 counts no try when the
        endpoint answered other calls since it was sent (the limiter is cutting: the server is
        busy, not down). Raises RetryError when it fails for good; other exceptions
        propagate."""
        limit = self.max_attempts if attempts is None else max(1, attempts)
        limiter = self.limiter
        attempt = 0
        while True:
            attempt += 1
            cost.http_requests += 1
            answered_before = limiter.successes
            ticket = await limiter.acquire(id(cost))
            ok = throttled = False
            try:
                result = await make()
                ok = True
                return result
            except Exception as exc:  # noqa: BLE001 - classified below
                failure = classify(exc)
                if failure is None:
                    raise
                throttled = cuts_concurrency(failure)
            finally:
                limiter.release(ticket, ok=ok, throttled=throttled)
                cost.concurrency = max(cost.concurrency, limiter.current)
            if throttled:
                cost.throttled_responses += 1
            free = (failure.status in FREE_RETRY_STATUS and limiter.adaptive
                    and limiter.successes > answered_before)
            if not failure.retryable or (attempt >= limit and not free):
                raise RetryError(failure, attempt)
            wait = backoff_seconds(attempt)
            if failure.retry_after_s is not None:
                if failure.retry_after_s > MAX_RETRY_AFTER_S:
                    raise RetryError(Failure(
                        failure.status, f"{failure.message} (the server asks to wait "
                        f"{failure.retry_after_s:.0f} s, more than {MAX_RETRY_AFTER_S:.0f} s)",
                        True), attempt)
                wait = failure.retry_after_s
            if failure.status in THROTTLE_STATUS:
                cost.throttled_seconds += wait
            cost.retries += 1
            if free:
                attempt -= 1  # the endpoint is busy, not failing: this try is not used up
            log.warning("http_retry", what=what, status=failure.status, attempt=attempt,
                        wait_s=round(wait, 2), reason=failure.message[:200],
                        concurrency=limiter.current)
            await self._sleep(wait)
