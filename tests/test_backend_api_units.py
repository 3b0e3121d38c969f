"""Unit tests of the remote backends' shared pieces (no server): arguments, URLs, retries and
backoff against lm-eval's tenacity policy, echo parsing and payloads against lm-eval's own
``LocalCompletionsAPI``, and each check of the logprob probe on shaped answers (an honest
echo, no echo as llama.cpp's server answers, logprobs shifted by one position as
llama-cpp-python's server answers). The servers themselves are exercised in
test_backend_completions.py, test_backend_chat.py, test_backend_llamacpp.py and
test_backend_anthropic.py.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time

import pytest

from evalfleet.inference.backends import get_backend
from evalfleet.inference.backends.api_args import api_root, parse_api_args
from evalfleet.inference.backends.api_http import (
    Caller,
    RetryError,
    backoff_seconds,
    http_module,
    retry_after_seconds,
)
from evalfleet.inference.backends.base import BackendArgumentError, Cost, ItemError
from evalfleet.inference.backends.logprob_probe import (
    PROBE_TEXT,
    SHUFFLED_TEXT,
    Echo,
    check_echo,
    check_top1,
    evaluate,
)


@pytest.mark.parametrize(("given", "root"), [
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1/completions", "http://127.0.0.1:8000/v1"),
    ("http://LOCALHOST:1234/v1/chat/completions", "http://localhost:1234/v1"),
    ("https://api.anthropic.com/v1/messages", "https://api.anthropic.com/v1"),
])
def test_base_url_is_taken_as_api_root_or_endpoint(given, root):
    assert api_root(given) == root


def test_arguments_name_the_field():
    with pytest.raises(BackendArgumentError, match="model_args.base_url: expected an http"):
        api_root("localhost:8000")
    with pytest.raises(BackendArgumentError, match="model_args.model: required"):
        parse_api_args("local-completions", {"base_url": "http://h/v1"})
    with pytest.raises(BackendArgumentError, match="model_args.base_url: required"):
        parse_api_args("local-completions", {"model": "m"})
    with pytest.raises(BackendArgumentError, match="max_tokens: .*did you mean max_gen_toks"):
        parse_api_args("local-completions", {"model": "m", "base_url": "http://h/v1",
                                             "max_tokens": 512})
    with pytest.raises(BackendArgumentError, match="tokenizer_backend: remote tokenizers"):
        parse_api_args("local-completions", {"model": "m", "base_url": "http://h/v1",
                                             "tokenizer_backend": "remote"})
    with pytest.raises(BackendArgumentError, match="num_concurrent: expected an integer"):
        parse_api_args("local-completions", {"model": "m", "base_url": "http://h/v1",
                                             "num_concurrent": "many"})
    args = parse_api_args("local-completions", {"model": "m", "base_url": "http://h/v1",
                                                "tokenizer_backend": "none", "batch_size": 4})
    assert args.tokenizer_backend is None and args.tokenized_requests is False
    assert args.batch_size == 4 and args.max_tokens_in_window == 2047


def test_registry_names_and_the_seeds_aliases():
    assert get_backend("openai").name == "openai-chat-completions"
    assert get_backend("anthropic").name == "anthropic-chat"
    assert get_backend("anthropic-chat-completions").name == "anthropic-chat"
    assert get_backend("local-completions").name == "local-completions"
    assert get_backend("openai-completions").name == "openai-completions"
    assert get_backend("local-chat-completions").name == "local-chat-completions"


# ----------------------------------------------------------------------------- retries
def _status_error(status: int, headers: dict[str, str] | None = None):
    import openai

    httpx = http_module()
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/completions")
    response = httpx.Response(status, headers=headers or {}, request=request,
                              json={"error": {"message": f"status {status}"}})
    cls = {429: openai.RateLimitError, 400: openai.BadRequestError}.get(
        status, openai.InternalServerError)
    return cls(f"status {status}", response=response, body={"error": {"message": "busy"}})


def test_backoff_is_lm_evals_tenacity_policy():
    import tenacity

    wait = tenacity.wait_exponential(multiplier=0.5, min=1, max=10)
    for attempt in range(1, 9):
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        assert backoff_seconds(attempt) == wait(state)


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_seconds({"retry-after": future}) <= 31
    assert retry_after_seconds({}) is None


def test_429_and_5xx_are_retried_with_retry_after_and_counted():
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    script = [_status_error(429, {"retry-after": "2"}), _status_error(503), "ok"]

    async def call():
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    cost = Cost()
    assert asyncio.run(Caller(4, 3, sleep=sleep).call(call, cost, "test")) == "ok"
    assert waits == [2.0, 1.0]  # Retry-After, then lm-eval's backoff for attempt 2
    assert (cost.http_requests, cost.retries, cost.throttled_seconds) == (3, 2, 2.0)


def test_a_4xx_is_not_retried_and_attempts_are_bounded():
    async def sleep(s: float) -> None:
        return None

    async def bad():
        raise _status_error(400)

    cost = Cost()
    with pytest.raises(RetryError) as err:
        asyncio.run(Caller(1, 3, sleep=sleep).call(bad, cost, "test"))
    assert not err.value.failure.retryable and cost.http_requests == 1

    async def busy():
        raise _status_error(503)

    cost = Cost()
    with pytest.raises(RetryError) as err:
        asyncio.run(Caller(1, 3, sleep=sleep).call(busy, cost, "test"))
    assert err.value.failure.retryable and "after 3 attempts" in str(err.value)
    assert (cost.http_requests, cost.retries) == (3, 2)


# ----------------------------------------------------------------------------- parsing
def _vllm_choice(rng: random.Random, n: int) -> dict:
    """A /v1/completions choice shaped as vLLM answers echo + logprobs=1."""
    token_logprobs: list = [None]
    tops: list = [None]
    tokens = [f"t{i}" for i in range(n + 1)]
    for i in range(1, n + 1):
        best = -rng.random()
        own = best if rng.random() < 0.6 else best - rng.random() * 4 - 0.01
        token_logprobs.append(own)
        tops.append({tokens[i]: own} if own == best else {tokens[i]: own, f"alt{i}": best})
    return {"index": 0, "text": "".join(tokens),
            "logprobs": {"tokens": tokens, "token_logprobs": token_logprobs,
                         "top_logprobs": tops, "text_offset": list(range(n + 1))}}


def test_echo_parsing_is_lm_evals():
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from evalfleet.inference.backends.openai_completions import parse_echo_scores

    rng = random.Random(1)
    for _ in range(100):
        n = rng.randrange(2, 40)
        ctxlen = rng.randrange(1, n)
        choice = _vllm_choice(rng, n)
        ours = parse_echo_scores(choice, n, ctxlen)
        [(total, greedy)] = LocalCompletionsAPI.parse_logprobs({"choices": [choice]},
                                                               ctxlens=[ctxlen])
        assert ours.total == pytest.approx(total, abs=1e-5) and ours.is_greedy == greedy
    no_echo = {"index": 0, "logprobs": {"tokens": ["x"], "token_logprobs": [-1.0],
                                        "top_logprobs": [{"x": -1.0}]}}
    error = parse_echo_scores(no_echo, 12, 5)
    assert isinstance(error, ItemError) and "echoed 1 logprobs for a prompt of 12" in \
        error.message  # lm-eval would sum an empty slice: 0.0 for every choice


def test_generation_payload_is_lm_evals(tiny_model_dir):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from evalfleet.inference.backends.base import GenerationParams, GenerationRequest
    from evalfleet.inference.backends.openai_completions import LocalCompletionsBackend

    args = {"model": "smol", "base_url": "http://127.0.0.1:1/v1/completions",
            "tokenizer": str(tiny_model_dir)}
    ours = LocalCompletionsBackend.from_model_args(args)
    theirs = LocalCompletionsAPI(tokenizer_backend="huggingface", **args)
    raw = {"until": ["Question:", "</s>"], "do_sample": False, "temperature": 0.0,
           "max_gen_toks": 32}
    request = GenerationRequest("Question: 2+2?\nAnswer:", GenerationParams.from_gen_kwargs(raw))
    prompt = ours._gen_prompt(request)
    assert prompt == theirs.tok_encode(request.context)
    expected = theirs._create_payload([prompt], generate=True, gen_kwargs=dict(raw), seed=1234,
                                      eos=theirs.eos_string)
    assert ours._gen_payload([prompt], request) == expected
    assert ours._score_payload([[1, 2, 3]]) == theirs._create_payload(
        theirs.create_message([[1, 2, 3]]), generate=False, seed=1234)


# ----------------------------------------------------------------------------- the probe
def _encode(text: str) -> list[int]:
    return [ord(c) for c in text]  # one token per character


def _honest(text: str, natural: bool, rng: random.Random) -> Echo:
    ids = _encode(text)
    lps: list = [None]
    tops: list = [None]
    for i in range(1, len(ids)):
        best = -rng.random() * (0.3 if natural else 3.0)
        own = best if rng.random() < 0.5 else best - 1.0 - rng.random() * (1 if natural else 6)
        lps.append(own)
        tops.append({text[i]: own} if own == best else {text[i]: own, "#": best})
    return Echo(ids, lps + [-0.5], list(text) + ["!"], tops + [{"!": -0.5}])


def test_an_honest_echo_passes_every_check():
    rng = random.Random(2)
    result = evaluate(_honest(PROBE_TEXT, True, rng), _honest(SHUFFLED_TEXT, False, rng),
                      _encode)
    assert result.passed, result.findings
    assert [f.split(" ")[0] for f in result.findings] == ["echo", "retokenize", "top-1",
                                                          "likelihood"]


def test_no_echo_fails_saying_so():
    echo = Echo(_encode(PROBE_TEXT), [-0.7], ["x"], [{"x": -0.7}])
    check = check_echo(echo)
    assert not check.passed and "does not echo the prompt's logprobs" in check.detail


def test_logprobs_shifted_by_one_position_fail_the_top1_check():
    rng = random.Random(3)
    honest = _honest(PROBE_TEXT, True, rng)
    # each position's logprob is the next position's (shifted by one); tops stay in place
    shifted = Echo(honest.ids, [None] + honest.token_logprobs[2:] + [-0.5], honest.tokens,
                   honest.top_logprobs)
    check = check_top1(shifted)
    assert not check.passed and "shifted" in check.detail


def test_logprobs_read_after_their_token_fail_the_top1_check():
    """llama-cpp-python's shape: each position's dict is consistent with itself, but it is the
    distribution after the token, so its top-1 is the next echoed token."""
    text = PROBE_TEXT
    ids = _encode(text)
    lps: list = [None]
    tops: list = [None]
    for i in range(1, len(ids)):
        lps.append(-9.0)
        top = {text[i]: -9.0}
        if i + 1 < len(text):
            top.setdefault(text[i + 1], -0.3)
        tops.append(top)
    check = check_top1(Echo(ids, lps, list(text), tops))
    assert not check.passed and "shifted by one position" in check.detail
    no_generated = check_echo(Echo(ids, lps, list(text), tops))
    assert not no_generated.passed and "without the generated token" in no_generated.detail
