"""The logprob honesty probe: does a completions server return correct prompt logprobs?

lm-eval's ``local-completions`` scores a continuation by sending context + continuation with
``echo`` and ``logprobs`` and summing the echoed logprobs of the continuation's tokens. A server
that does not echo (llama.cpp's server), returns none (LM Studio), shifts them by one position
(llama-cpp-python's server) or tokenizes differently from the tokenizer evalfleet holds makes
that sum wrong, and lm-eval then reports chance-level accuracy without a word. Before offering
loglikelihood, evalfleet asks the server for two short texts it knows, exactly as it would send
a real request, and checks:

* **echo**: one logprob per prompt token but the first, plus the one generated token;
* **retokenize**: the echoed tokens join to a text that re-tokenizes to the prompt sent;
* **top-1**: wherever the echoed token is the top-1 alternative, its logprob equals the top-1
  logprob, no echoed token is likelier than the top-1, and the top-1 alternatives do not match
  the token one position later more often than the token itself (a shifted position or a
  re-sampled distribution fails this);
* **likelihood**: a text any language model finds likely (weekdays, then counting) scores far
  above the same words shuffled (mean logprob per token at least ``MIN_MARGIN`` nats higher).

A server that fails any check is served generation-only, with the failed checks as the reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from evalfleet.inference.backends.base import ProbeResult

PROBE_TEXT = ("Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. "
              "One, two, three, four, five, six, seven, eight, nine, ten.")
#: PROBE_TEXT's words in a fixed shuffled order.
SHUFFLED_TEXT = ("Thursday, seven, One, ten. Sunday. four, Wednesday, nine, Monday, "
                 "three, Saturday, six, two, Friday, eight, five, Tuesday,")
#: Mean logprob per token by which the natural text must beat the shuffled one.
MIN_MARGIN = 1.0
#: Tolerance on "equals the top-1 logprob" (an honest server sends the same number twice).
TOP1_TOLERANCE = 1e-4


class ProbeRequestError(Exception):
    """The server refused or failed a probe request; the message says how."""


@dataclass(frozen=True)
class Echo:
    """The parts of one echoed completions response the checks read."""

    ids: list[int]  # prompt token ids sent (or the tokenizer's encoding of the text sent)
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


@dataclass(frozen=True)
class Check:
    """One check's outcome and its one-line finding."""

    name: str
    passed: bool
    detail: str

    @property
    def finding(self) -> str:
        return f"{self.name} {'ok' if self.passed else 'FAILED'}: {self.detail}"


def parse_echo(ids: list[int], response: dict[str, Any]) -> Echo | str:
    """The echo of ``ids`` in a completions response, or why it has none."""
    choices = response.get("choices") or []
    if not choices:
        return "the response has no choices"
    logprobs = choices[0].get("logprobs")
    if not isinstance(logprobs, dict) or logprobs.get("token_logprobs") is None:
        return "the response carries no logprobs (the server ignores `logprobs`)"
    return Echo(ids, list(logprobs.get("token_logprobs") or []),
                [str(t) for t in logprobs.get("tokens") or []],
                list(logprobs.get("top_logprobs") or []))


def check_echo(echo: Echo) -> Check:
    """One logprob per prompt token but the first, plus one generated token."""
    n, got = len(echo.ids), len(echo.token_logprobs)
    if got <= 1 < n:
        return Check("echo", False, f"the server returned {got} logprob for a {n}-token prompt: "
                                    "it does not echo the prompt's logprobs (llama.cpp's "
                                    "server behaves so)")
    if got < n or got > n + 1:
        return Check("echo", False, f"the server returned {got} logprobs for a {n}-token prompt "
                                    "plus 1 generated token: its tokenization of the prompt "
                                    "differs from the tokenizer's (a BOS token added, or "
                                    "another tokenizer)")
    missing = [i for i in range(1, n) if not _is_number(echo.token_logprobs[i])]
    if missing:
        return Check("echo", False, f"{len(missing)} of {n - 1} prompt tokens after the first "
                                    f"have no logprob (first at position {missing[0]})")
    if got == n:
        return Check("echo", False, f"the {n} prompt tokens come back without the generated "
                                    "token's logprob, so lm-eval's slice [ctxlen:-1] would drop "
                                    "each continuation's last token")
    return Check("echo", True, f"{n - 1} of {n - 1} prompt tokens after the first have a "
                               "logprob, then the generated token's")


def prompt_aligned(echo: Echo) -> bool:
    """Whether the echo holds a logprob for each prompt position (the other checks need it)."""
    n = len(echo.ids)
    return len(echo.token_logprobs) >= n and all(
        _is_number(echo.token_logprobs[i]) for i in range(1, n))


def check_retokenize(echo: Echo, encode: Callable[[str], list[int]]) -> Check:
    """The echoed prompt tokens join to a text that tokenizes to the prompt's ids."""
    n = len(echo.ids)
    if len(echo.tokens) < n:
        return Check("retokenize", False, f"the server echoed {len(echo.tokens)} tokens for "
                                          f"a {n}-token prompt")
    joined = "".join(echo.tokens[:n])
    again = encode(joined)
    if again != echo.ids:
        at = next((i for i, (a, b) in enumerate(zip(again, echo.ids, strict=False)) if a != b),
                  min(len(again), n))
        return Check("retokenize", False,
                     f"the echoed tokens join to {joined[:60]!r}..., which tokenizes to "
                     f"{len(again)} tokens, not the {n} sent (first difference at token {at}): "
                     "the server's tokenizer is not the one given (tokenizer=)")
    return Check("retokenize", True, f"the {n} echoed tokens re-tokenize to the prompt")


def check_top1(echo: Echo) -> Check:
    """The logprobs belong to the echoed tokens' own positions: where the echoed token is the
    top-1 alternative its logprob is the top-1 logprob, none is above the top-1, and the top-1
    alternatives do not keep predicting the *next* echoed token (a shift by one position)."""
    n = len(echo.ids)
    if len(echo.top_logprobs) < n or all(t is None for t in echo.top_logprobs[1:n]):
        return Check("top-1", False, "the server returns no top_logprobs for the prompt "
                                     "(needed for is_greedy)")
    agree = ahead = 0
    for i in range(1, n):
        top, value = echo.top_logprobs[i], echo.token_logprobs[i]
        if not top or not _is_number(value):
            continue
        best_token, best = max(top.items(), key=lambda kv: kv[1])
        token = echo.tokens[i] if i < len(echo.tokens) else None
        if value > best + TOP1_TOLERANCE:
            return Check("top-1", False,
                         f"at prompt token {i} ({token!r}) the echoed logprob {value:.4f} is "
                         f"above the top-1 logprob {best:.4f} ({best_token!r}): the logprobs "
                         "are not of the echoed tokens' own positions (shifted or re-sampled)")
        if token == best_token:
            if abs(value - best) > TOP1_TOLERANCE:
                return Check("top-1", False,
                             f"at prompt token {i} the echoed token {token!r} is the top-1 "
                             f"alternative ({best:.4f}) but its logprob is {value:.4f}: the "
                             "logprobs are shifted by a position or re-sampled")
            agree += 1
        if i + 1 < n and i + 1 < len(echo.tokens) and echo.tokens[i + 1] == best_token:
            ahead += 1
    if ahead > agree:
        return Check("top-1", False,
                     f"the top-1 alternative at a prompt position is the token echoed one "
                     f"position later {ahead} times and the token echoed there only {agree} "
                     "times: each logprob is taken from the distribution after its token, not "
                     "before it (shifted by one position; llama-cpp-python's server does this)")
    return Check("top-1", True, f"{agree} echoed tokens are the top-1 alternative and carry "
                                "its logprob; none is likelier than the top-1")


def mean_prompt_logprob(echo: Echo) -> float:
    """Mean logprob of the prompt tokens after the first."""
    values = [v for v in echo.token_logprobs[1:len(echo.ids)] if _is_number(v)]
    return sum(values) / len(values) if values else float("nan")


def check_likelihood(natural: Echo, shuffled: Echo) -> Check:
    """A text the model must find likely scores far above its words shuffled."""
    a, b = mean_prompt_logprob(natural), mean_prompt_logprob(shuffled)
    verdict = (f"the natural text scores {a:.2f} nats/token, its words shuffled {b:.2f}")
    if not (a - b >= MIN_MARGIN):
        return Check("likelihood", False,
                     f"{verdict}: the natural order should be at least {MIN_MARGIN:.1f} "
                     "nats/token likelier; these logprobs are not the model's prediction of "
                     "each prompt token from the tokens before it")
    return Check("likelihood", True, f"{verdict}, {a - b:.2f} apart")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def evaluate(natural: Echo, shuffled: Echo, encode: Callable[[str], list[int]]) -> ProbeResult:
    """Run every check on the two echoes (those that need a logprob per prompt position run
    when the echo has them, even if its length is otherwise wrong)."""
    checks: list[Check] = [check_echo(natural)]
    if prompt_aligned(natural):
        checks += [check_retokenize(natural, encode), check_top1(natural)]
        checks.append(check_likelihood(natural, shuffled) if prompt_aligned(shuffled)
                      else Check("likelihood", False,
                                 f"shuffled text: {check_echo(shuffled).detail}"))
    return ProbeResult(all(c.passed for c in checks), tuple(c.finding for c in checks))


async def probe_server(score: Callable[[str, list[int]], Awaitable[dict[str, Any]]],
                       encode: Callable[[str], list[int]]) -> ProbeResult:
    """Ask the server (``score(text, ids)`` sends one loglikelihood request exactly as real
    ones are sent and returns the response JSON) and check its answers."""
    echoes: list[Echo] = []
    for text in (PROBE_TEXT, SHUFFLED_TEXT):
        ids = encode(text)
        try:
            response = await score(text, ids)
        except ProbeRequestError as exc:
            return ProbeResult(False, (f"request FAILED: the server refused a prompt-logprobs "
                                       f"request (echo + logprobs): {exc}",))
        echo = parse_echo(ids, response)
        if isinstance(echo, str):
            return ProbeResult(False, (f"echo FAILED: {echo}",))
        echoes.append(echo)
    return evaluate(echoes[0], echoes[1], encode)


def failed_findings(result: ProbeResult) -> list[str]:
    """The findings of the checks that failed."""
    return [f for f in result.findings if " FAILED: " in f]


@dataclass
class ProbeState:
    """The latest probe of a server and when it ran (monotonic seconds)."""

    result: ProbeResult | None = None
    at: float = 0.0

    def stale(self, max_age_s: float) -> bool:
        return self.result is None or time.monotonic() - self.at > max_age_s

    def record(self, result: ProbeResult) -> None:
        self.result, self.at = result, time.monotonic()


def summary(findings: Sequence[str]) -> str:
    """Failed findings as one sentence for a refusal message."""
    return "; ".join(findings)
