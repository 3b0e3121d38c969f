"""``anthropic-chat`` against a local server that speaks the Messages API (no network here):
generation works with lm-eval's payloads, loglikelihood tasks are refused before any work,
and a 429 with Retry-After is retried and reported in the job's events.

The stand-in (tests/servers/anthropic_messages.py) generates with the tiny model.
"""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from conftest import (
    anthropic_test_server,
    recorded_requests,
    run_evaluation,
)

from evalfleet.inference.backends.base import BackendArgumentError
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

GEN_KWARGS = "max_gen_toks=16"


@pytest.fixture(scope="module")
def stand_in(tiny_model_dir, tmp_path_factory):
    record = tmp_path_factory.mktemp("anthropic") / "requests.jsonl"
    srv = anthropic_test_server(tiny_model_dir, record=record)
    yield srv
    srv.stop()


def _arm_rate_limit(srv, count: int, retry_after: float) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{srv.port}/admin/rate-limit", method="POST",
        data=json.dumps({"count": count, "retry_after": retry_after}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["armed"] == count


def _backend(srv, **extra):
    from evalfleet.inference.server import load_backend

    args = {"model": "claude-stand-in", "base_url": f"{srv.base_url}/messages",
            "api_key": "test-key", **extra}
    return load_backend("anthropic", args), args


def _spec(**kw) -> cpb.EvaluationSpec:
    fields = {"model": "anthropic", "tasks": ["gsm8k"], "limit": 2, "log_samples": True,
              "bootstrap_iters": 0, "apply_chat_template": True, "gen_kwargs": GEN_KWARGS,
              **kw}
    return cpb.EvaluationSpec(**fields)


def test_generation_sends_lm_evals_payload(stand_in, worker_and_coordinator):
    from lm_eval.models.anthropic_llms import AnthropicChat

    backend, model_args = _backend(stand_in)
    assert backend.name == "anthropic-chat"
    address = worker_and_coordinator(backend, model_args)
    mark = len(recorded_requests(stand_in))
    final, _, results, samples = run_evaluation(
        address, _spec(system_instruction="Answer with a number."))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    sent = recorded_requests(stand_in)[mark:]
    assert len(sent) == 2
    for r in sent:  # the official client's auth and API version headers
        assert "test-key" in (r["headers"].get("x-api-key", "")
                              + r["headers"].get("authorization", ""))
        assert r["headers"]["anthropic-version"]
    lm = AnthropicChat(model="claude-stand-in", max_gen_toks=256)
    def canonical(payload):
        return json.dumps(payload, sort_keys=True)

    bodies = sorted((r["body"] for r in sent), key=canonical)
    expected = []
    one_per_doc = {s["doc_id"]: s for s in samples["gsm8k"]}  # a record per filter
    for sample in one_per_doc.values():
        messages = json.loads(sample["arguments"]["gen_args_0"]["arg_0"])
        gen_kwargs = {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False,
                      "temperature": 0.0, "max_gen_toks": 16}
        # lm-eval's num_concurrent=1 path passes eos=self.eos_string (None: no tokenizer)
        expected.append(lm._create_payload(messages, generate=True, gen_kwargs=gen_kwargs,
                                           eos=None))
        assert isinstance(sample["resps"][0][0], str)
    assert bodies == sorted(expected, key=canonical)
    assert bodies[0]["system"] == "Answer with a number."
    assert "gsm8k" in results["results"]


def test_loglikelihood_task_is_refused_before_any_work(stand_in, worker_and_coordinator):
    backend, model_args = _backend(stand_in)
    address = worker_and_coordinator(backend, model_args)
    mark = len(recorded_requests(stand_in))
    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                model="anthropic", tasks=["arc_easy"], limit=2, apply_chat_template=True)),
                timeout=120)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = err.value.details()
    for part in ("task arc_easy needs loglikelihood", "anthropic-chat",
                 "chat endpoints return no prompt logprobs", "Instead: run generative tasks"):
        assert part in message, (part, message)
    assert recorded_requests(stand_in)[mark:] == []


def test_429_with_retry_after_is_retried_and_reported(stand_in, worker_and_coordinator):
    backend, model_args = _backend(stand_in)
    address = worker_and_coordinator(backend, model_args)
    _arm_rate_limit(stand_in, count=2, retry_after=1.5)
    final, events, _, samples = run_evaluation(address, _spec(limit=1))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    notes = [e.message for e in events if "batch of" in e.message]
    assert any("2 HTTP retries" in n and "throttled 3.0 s by the API" in n for n in notes), notes
    assert {s["doc_id"] for s in samples["gsm8k"]} == {0}


def test_rate_limit_beyond_retries_is_a_retryable_item_error(stand_in):
    import asyncio

    from evalfleet.inference.backends.base import GenerationParams, GenerationRequest, ItemError

    backend, _ = _backend(stand_in, max_retries=2)
    _arm_rate_limit(stand_in, count=2, retry_after=0.2)

    async def go():
        try:
            return await backend.generate_until([GenerationRequest(
                [{"role": "user", "content": "Hi"}], GenerationParams(["\n"], 4))])
        finally:
            await backend.close()

    answers = asyncio.run(go())
    error = answers.results[0]
    assert isinstance(error, ItemError) and error.retryable
    assert "HTTP 429" in error.message and "after 2 attempts" in error.message
    assert answers.cost.http_requests == 2 and answers.cost.retries == 1
    assert answers.cost.throttled_seconds == pytest.approx(0.2)


def test_missing_api_key_names_the_variable(monkeypatch):
    from evalfleet.inference.server import load_backend

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(BackendArgumentError, match="ANTHROPIC_API_KEY"):
        load_backend("anthropic", {"model": "claude-3-opus-20240229"})
