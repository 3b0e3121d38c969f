"""One contract, every backend: what a backend advertises in its ``Capabilities`` is what it
does, through the real gRPC worker (inference/server.py) on loopback.

Run over hf (the tiny model), local-completions and local-chat-completions against
tests/servers/openai_compat.py, anthropic-chat against tests/servers/anthropic_messages.py (both
stand-ins serve the real SmolLM2-135M: the tiny random model's logprobs fail the completions
backend's honesty probe, and its chat answers are blank lines), and vllm where CUDA and vllm
are (skipped elsewhere), as the store contract suite runs over both stores. Each backend is
loaded with ``max_length`` 64 (vllm: ``max_model_len``) so that over-long requests are cheap.

The contract: ModelInfo and Capabilities agree with each other and with GetModelInfo; every
answering method gives one outcome per request, in request order; a kind the capabilities
support is answered with finite log-probabilities <= 0, one per token, and greedy flags that
hold for a continuation the model itself generated; a kind they do not support is refused on
each item with the advertised reason; generate_until stops at ``until`` and within
``max_gen_toks``; an empty prompt, a prompt in the wrong form (text to a chat-only backend,
messages to a text one), and a request longer than ``max_context_tokens`` get a one-line,
non-retryable item error, and the rest of the batch is still answered.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import (
    anthropic_test_server,
    openai_test_server,
)

from evalfleet.inference.backends.base import Backend, ChatTemplateSupport
from evalfleet.v1 import inference_pb2 as ipb
from evalfleet.v1 import inference_pb2_grpc as ipb_grpc

MAX_LENGTH = 64
PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,"]
CONTINUATIONS = [" Paris", " there lived a king", " 5, 6, 7, 8, 9"]
ROLLING_TEXTS = ["A short text.", "Counting up: " + " ".join(str(i) for i in range(60))]


def _gpu() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


@dataclass
class Served:
    """A backend behind a real worker: its gRPC stub, and the tokenizer of its model."""

    name: str
    backend: Backend
    stub: ipb_grpc.InferenceServiceStub
    tokenizer: Any

    @property
    def messages(self) -> bool:
        """Prompts travel as chat messages (the server applies its template)."""
        return self.backend.model_info().capabilities.chat_template is \
            ChatTemplateSupport.MESSAGES


@pytest.fixture(scope="module")
def openai_stand_in(real_model_dir):
    srv = openai_test_server(real_model_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def anthropic_stand_in(real_model_dir):
    srv = anthropic_test_server(real_model_dir)
    yield srv
    srv.stop()


def _model_args(name: str, request, model_dir: Path) -> dict[str, Any]:
    if name == "hf":
        return {"pretrained": str(model_dir), "dtype": "float32", "device": "cpu",
                "max_length": MAX_LENGTH}
    if name == "vllm":
        return {"pretrained": str(model_dir), "dtype": "float32", "max_model_len": MAX_LENGTH,
                "gpu_memory_utilization": 0.2, "enforce_eager": True}
    if name == "anthropic-chat":
        srv = request.getfixturevalue("anthropic_stand_in")
        return {"model": "claude-stand-in", "base_url": f"{srv.base_url}/messages",
                "api_key": "test-key"}
    srv = request.getfixturevalue("openai_stand_in")
    if name == "local-completions":
        return {"model": "smol", "base_url": srv.base_url, "tokenizer": str(model_dir),
                "max_length": MAX_LENGTH, "probe_interval_s": 3600}
    return {"model": "smol", "base_url": f"{srv.base_url}/chat/completions"}


@pytest.fixture(scope="module", params=[
    "hf", "local-completions", "local-chat-completions", "anthropic-chat",
    pytest.param("vllm", marks=pytest.mark.skipif(not _gpu(), reason="needs CUDA and vllm")),
])
def served(request, background_loop, tiny_model_dir):
    """Each backend loaded as ``serve worker`` loads it, behind a real worker on loopback."""
    from transformers import AutoTokenizer

    from evalfleet.inference.server import load_backend, start_worker

    model_args = _model_args(request.param, request, tiny_model_dir)
    backend = load_backend(request.param, model_args, 4)
    server = background_loop.run(start_worker(backend, model_args=model_args))
    channel = grpc.insecure_channel(server.address)
    yield Served(request.param, backend, ipb_grpc.InferenceServiceStub(channel),
                 AutoTokenizer.from_pretrained(tiny_model_dir))
    channel.close()
    background_loop.run(server.stop(0.5))


# -- helpers ------------------------------------------------------------------------------------

def _loglikelihood(served: Served, pairs: list[tuple[str, str]]) -> list[ipb.TokenScores]:
    response = served.stub.Loglikelihood(ipb.LoglikelihoodRequest(items=[
        ipb.LoglikelihoodItem(request_id=f"ll{i}", context=c, continuation=x)
        for i, (c, x) in enumerate(pairs)]), timeout=120)
    assert [r.request_id for r in response.results] == [f"ll{i}" for i in range(len(pairs))]
    return list(response.results)


def _rolling(served: Served, texts: list[str]) -> list[ipb.TokenScores]:
    response = served.stub.LoglikelihoodRolling(ipb.LoglikelihoodRollingRequest(items=[
        ipb.RollingItem(request_id=f"r{i}", text=t) for i, t in enumerate(texts)]), timeout=120)
    assert [r.request_id for r in response.results] == [f"r{i}" for i in range(len(texts))]
    return list(response.results)


def _generate(served: Served, prompts: list[str], *, until: tuple[str, ...] = (),
              max_gen_toks: int = 8, as_messages: bool | None = None) -> list[ipb.Generation]:
    messages = served.messages if as_messages is None else as_messages
    items = [ipb.GenerateItem(
        request_id=f"g{i}", chat_messages=messages,
        context=json.dumps([{"role": "user", "content": p}]) if messages and p else p,
        params=ipb.GenerationParams(until=list(until), max_gen_toks=max_gen_toks))
        for i, p in enumerate(prompts)]
    response = served.stub.GenerateUntil(ipb.GenerateUntilRequest(items=items), timeout=120)
    assert [r.request_id for r in response.results] == [f"g{i}" for i in range(len(prompts))]
    return list(response.results)


def _texts(results: list[ipb.Generation]) -> list[str]:
    for r in results:
        assert not r.HasField("error"), r.error.message
    return [r.text for r in results]


def _token_count(served: Served, text: str) -> int:
    return len(served.tokenizer(text, add_special_tokens=False).input_ids)


def _assert_scores(result: ipb.TokenScores, n_tokens: int) -> None:
    assert not result.HasField("error"), result.error.message
    assert len(result.logprobs) == len(result.greedy) == n_tokens
    assert all(math.isfinite(x) and x <= 0.0 for x in result.logprobs), list(result.logprobs)


def _assert_refused(results: list, reason: str) -> None:
    for r in results:
        assert r.HasField("error") and not r.error.retryable and not r.logprobs
        assert r.error.message == reason


# -- the contract -------------------------------------------------------------------------------

def test_model_info_agrees_with_capabilities_and_the_wire(served):
    from evalfleet.inference.server import capabilities_pb

    info = served.backend.model_info()
    caps = info.capabilities
    wire = served.stub.GetModelInfo(ipb.GetModelInfoRequest(), timeout=30)
    assert info.backend == served.backend.name == served.name == wire.backend
    assert info.fingerprint.startswith("sha256:") and len(info.fingerprint) == 71
    assert wire.fingerprint == info.fingerprint and wire.model_name == info.model_name
    expected = capabilities_pb(caps)
    assert wire.capabilities == expected
    assert wire.library_versions["evalfleet"] and dict(wire.library_versions) == dict(
        info.library_versions)
    assert caps.generate_until and caps.max_concurrent_batches >= 1
    # a kind refused comes with why and what to do instead; when both are answered, neither
    scores = caps.loglikelihood and caps.loglikelihood_rolling
    assert bool(caps.logprobs_unavailable_reason) is not scores
    assert bool(caps.logprobs_remedy) is not scores
    if caps.chat_only:
        assert caps.chat_template is ChatTemplateSupport.MESSAGES
        assert not caps.loglikelihood and not caps.loglikelihood_rolling
    if caps.max_context_tokens:
        assert caps.max_context_tokens == info.max_length == MAX_LENGTH


def test_loglikelihood_in_request_order_or_refused_with_the_reason(served):
    caps = served.backend.model_info().capabilities
    pairs = list(zip(PROMPTS, CONTINUATIONS, strict=True))
    batch = _loglikelihood(served, pairs)
    if not caps.loglikelihood:
        _assert_refused(batch, caps.logprobs_unavailable_reason)
        return
    for result, (_, continuation) in zip(batch, pairs, strict=True):
        _assert_scores(result, _token_count(served, continuation))
    # each answer is its own request's: asked alone, in reverse order, the same scores
    alone = [_loglikelihood(served, [pair])[0] for pair in reversed(pairs)][::-1]
    for got, want in zip(batch, alone, strict=True):
        assert list(got.logprobs) == pytest.approx(list(want.logprobs), abs=1e-4)
        assert list(got.greedy) == list(want.greedy)


def test_greedy_flags_hold_for_the_models_own_generation(served):
    caps = served.backend.model_info().capabilities
    if not caps.loglikelihood:
        pytest.skip(f"{served.name} answers no loglikelihood (checked above)")
    # the model's own next token is its argmax; a continuation it would not write is not
    generated = _texts(_generate(served, PROMPTS[:2], max_gen_toks=1))
    pairs = [(p, g) for p, g in zip(PROMPTS, generated, strict=False) if g.strip()]
    assert pairs, generated
    pairs.append((PROMPTS[0], " zebra quantum spoon marmalade"))
    *own, other = _loglikelihood(served, pairs)
    for result in own:
        assert not result.HasField("error") and list(result.greedy) == [True], result
    assert not all(other.greedy)


def test_rolling_scores_every_token_or_is_refused(served):
    caps = served.backend.model_info().capabilities
    results = _rolling(served, ROLLING_TEXTS)
    if not caps.loglikelihood_rolling:
        _assert_refused(results, caps.logprobs_unavailable_reason)
        return
    # the second text is longer than max_length: scored over several windows, every token once
    assert _token_count(served, ROLLING_TEXTS[1]) > MAX_LENGTH
    for result, text in zip(results, ROLLING_TEXTS, strict=True):
        _assert_scores(result, _token_count(served, text))


def test_generation_in_request_order_stops_at_until_and_within_max_gen_toks(served):
    prompts = PROMPTS[:2]
    free = _texts(_generate(served, prompts, max_gen_toks=6))
    # asked in reverse order with fewer tokens: each answer is its own request's, cut shorter
    short = _texts(_generate(served, prompts[::-1], max_gen_toks=3))[::-1]
    for long_text, short_text in zip(free, short, strict=True):
        assert long_text.startswith(short_text)  # greedy: the same tokens, fewer of them
        assert _token_count(served, short_text) <= 3 + 1  # re-encoding may split one token
    assert short != free
    # a stop string taken from inside each generation cuts it just before that string
    stops = {i: t[len(t) // 2:len(t) // 2 + 2] for i, t in enumerate(free) if len(t.strip()) > 4}
    assert stops, free
    items = [ipb.GenerateItem(
        request_id=f"s{i}", chat_messages=served.messages,
        context=json.dumps([{"role": "user", "content": prompts[i]}]) if served.messages
        else prompts[i], params=ipb.GenerationParams(until=[stop], max_gen_toks=6))
        for i, stop in stops.items()]
    stopped = served.stub.GenerateUntil(ipb.GenerateUntilRequest(items=items), timeout=120)
    for (i, stop), result in zip(stops.items(), stopped.results, strict=True):
        assert result.text == free[i][:free[i].index(stop)], (stop, free[i], result.text)


def test_bad_items_are_refused_alone_and_the_rest_answered(served):
    caps = served.backend.model_info().capabilities
    # an empty prompt, and a prompt in the form this backend does not take, between good ones
    mixed = _generate(served, [PROMPTS[1], "", PROMPTS[1]], max_gen_toks=2)
    assert [r.HasField("error") for r in mixed] == [False, True, False]
    assert mixed[0].text == mixed[2].text
    empty = mixed[1].error
    assert not empty.retryable and "items[1].context" in empty.message
    wrong_form = _generate(served, [PROMPTS[0]], as_messages=not served.messages)[0].error
    assert wrong_form.message and not wrong_form.retryable
    assert ("takes chat messages" if served.messages else "takes prompt text") in \
        wrong_form.message
    if not caps.max_context_tokens:
        return
    # over-long: a generation leaving no room for its prompt, a continuation past max_length
    for r in _generate(served, PROMPTS[:2], max_gen_toks=MAX_LENGTH):
        assert r.HasField("error") and not r.error.retryable
        assert f"max_length {MAX_LENGTH}" in r.error.message
        assert "max_gen_toks" in r.error.message
    if caps.loglikelihood:
        long = " " + " ".join(["word"] * (2 * MAX_LENGTH))
        ll = _loglikelihood(served, [(PROMPTS[0], CONTINUATIONS[0]), (PROMPTS[1], long)])
        assert not ll[0].HasField("error")
        assert ll[1].HasField("error") and not ll[1].error.retryable
        assert f"max_length {MAX_LENGTH}" in ll[1].error.message
