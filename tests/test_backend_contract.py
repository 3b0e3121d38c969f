"""The backend contract end to end: per-item outcomes, costs and capability checks.

Real gRPC workers and coordinators on loopback. Per-item errors of the real hf backend use the
tiny model with a short max_length; the retry and capability paths use a small scripted
backend (a unit-test stand-in: the real remote backends have their own tests).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest
from conftest import run_evaluation

from evalfleet.inference.backends.base import (
    Answers,
    Backend,
    Capabilities,
    ChatTemplateSupport,
    Cost,
    GenerationRequest,
    ItemError,
    ModelInfo,
    TokenScores,
)
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc
from evalfleet.v1 import inference_pb2 as ipb
from evalfleet.v1 import inference_pb2_grpc as ipb_grpc


class ScriptedBackend(Backend):
    """Answers every loglikelihood with -1 per continuation character.

    ``fail_once``: the first call's items at these positions get a retryable error.
    ``fail_first_forever``: the first continuation ever asked is refused on every try.
    """

    name: ClassVar[str] = "scripted"

    def __init__(self, caps: Capabilities, *, fail_once: tuple[int, ...] = (),
                 fail_first_forever: bool = False) -> None:
        self.caps = caps
        self.fail_once, self.fail_first_forever = fail_once, fail_first_forever
        self.doomed: str | None = None
        self.calls: list[list[str]] = []

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any], *, batch_size: int | str = 1):
        raise NotImplementedError

    def model_info(self) -> ModelInfo:
        return ModelInfo("scripted", "scripted-model", "local", "none", 2048,
                         "sha256:" + "0" * 64, "float32", "cpu", 0, 0, None, None, None,
                         self.caps, {"evalfleet": "test"})

    def _outcome(self, position: int, continuation: str) -> TokenScores | ItemError:
        if self.fail_first_forever and self.doomed is None:
            self.doomed = continuation
        if continuation == self.doomed:
            return ItemError(f"cannot score {continuation!r}")
        if len(self.calls) == 1 and position in self.fail_once:
            return ItemError("server returned 503 after 3 tries", retryable=True)
        n = max(1, len(continuation))
        return TokenScores(np.full(n, -1.0, np.float32), np.zeros(n, bool))

    async def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> Answers[TokenScores]:
        self.calls.append([c for _, c in requests])
        return Answers([self._outcome(i, c) for i, (_, c) in enumerate(requests)],
                       Cost(http_requests=1))

    async def loglikelihood_rolling(self, texts: Sequence[str]) -> Answers[TokenScores]:
        return Answers([self._outcome(i, t) for i, t in enumerate(texts)])

    async def generate_until(self, requests: Sequence[GenerationRequest]) -> Answers[str]:
        return Answers([json.dumps(r.context)[:20] for r in requests])


CHAT_ENDPOINT = Capabilities(
    loglikelihood=False, loglikelihood_rolling=False, generate_until=True,
    logprobs_unavailable_reason="chat endpoints return no prompt logprobs",
    logprobs_remedy="use local-completions against a server that echoes prompt logprobs, "
                    "or generative tasks", chat_only=True,
    chat_template=ChatTemplateSupport.MESSAGES)
SCORER = Capabilities(loglikelihood=True, loglikelihood_rolling=True, generate_until=True)


@pytest.fixture()
def services(background_loop, data_dir):
    """Start a worker for a backend plus a coordinator on it; stop both afterwards."""
    from evalfleet.inference.server import start_worker
    from evalfleet.server.service import start_coordinator

    started = []

    def start(backend: Backend) -> str:
        worker = background_loop.run(start_worker(backend))
        coordinator, _ = background_loop.run(start_coordinator(
            workers=[worker.address], data_dir=data_dir))
        started.extend([coordinator, worker])
        return coordinator.address

    yield start
    for server in started:
        background_loop.run(server.stop(0.5))


def _run(address: str, spec: cpb.EvaluationSpec) -> tuple[cpb.Evaluation, list]:
    final, events, _, _ = run_evaluation(address, spec, timeout_s=300)
    return final, events


def test_hf_answers_the_rest_of_a_batch_when_one_item_is_too_long(background_loop,
                                                                  tiny_model_dir):
    from evalfleet.inference.server import load_backend, start_worker

    backend = load_backend("hf", {"pretrained": str(tiny_model_dir), "max_length": 8}, 2)
    server = background_loop.run(start_worker(backend))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = ipb_grpc.InferenceServiceStub(channel)
            response = stub.Loglikelihood(ipb.LoglikelihoodRequest(items=[
                ipb.LoglikelihoodItem(request_id="ok", context="The capital of France is",
                                      continuation=" Paris"),
                ipb.LoglikelihoodItem(
                    request_id="long", context="Count:",
                    continuation=" one two three four five six seven eight nine ten"),
            ]), timeout=60)
    finally:
        background_loop.run(server.stop(0.5))
    ok, long = response.results
    assert not ok.HasField("error") and len(ok.logprobs) >= 1
    assert long.HasField("error") and not long.error.retryable and not long.logprobs
    assert "exceeds max_length 8" in long.error.message
    assert response.cost.positions_computed > 0


def test_job_fails_naming_the_request_a_worker_cannot_answer(background_loop, services,
                                                             tiny_model_dir):
    from evalfleet.inference.server import load_backend

    address = services(load_backend("hf", {"pretrained": str(tiny_model_dir),
                                           "max_length": 8}, 4))
    final, _ = _run(address, cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=4))
    assert final.state == cpb.EVALUATION_STATE_FAILED
    assert "task arc_easy doc " in final.error and "(loglikelihood #" in final.error
    assert "exceeds max_length 8" in final.error


def test_retryable_item_errors_are_retried_and_permanent_ones_fail_the_job(services):
    backend = ScriptedBackend(SCORER, fail_once=(1, 5))
    final, events = _run(services(backend),
                         cpb.EvaluationSpec(tasks=["arc_easy"], limit=3, bootstrap_iters=0))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert len(backend.calls) == 2  # the whole batch, then its two failed items again
    assert backend.calls[1] == [backend.calls[0][1], backend.calls[0][5]]
    assert any("2 requests to retry" in e.message for e in events)

    failing = ScriptedBackend(SCORER, fail_first_forever=True)
    final, _ = _run(services(failing),
                    cpb.EvaluationSpec(tasks=["arc_easy"], limit=3, bootstrap_iters=0))
    assert final.state == cpb.EVALUATION_STATE_FAILED
    assert f"cannot score {failing.doomed!r}" in final.error
    assert "task arc_easy doc 0 (loglikelihood #0)" in final.error


def test_loglikelihood_task_on_a_chat_endpoint_is_refused_before_any_work(services):
    backend = ScriptedBackend(CHAT_ENDPOINT)
    address = services(backend)
    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                tasks=["arc_easy"], limit=2, apply_chat_template=True)), timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = err.value.details()
    for part in ("task arc_easy", "loglikelihood", "scripted", "chat endpoints return no "
                 "prompt logprobs", "Instead: use local-completions"):
        assert part in message, (part, message)
    assert backend.calls == []


def test_chat_endpoint_needs_apply_chat_template_and_gets_messages(services):
    backend = ScriptedBackend(CHAT_ENDPOINT)
    address = services(backend)
    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                tasks=["gsm8k"], limit=1)), timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--apply_chat_template" in err.value.details()
    final, _ = _run(address, cpb.EvaluationSpec(tasks=["gsm8k"], limit=2, bootstrap_iters=0,
                                                apply_chat_template=True, log_samples=True))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error


def test_chat_messages_reach_the_backend_as_messages(background_loop):
    from evalfleet.inference.server import start_worker

    seen: list = []

    class Recording(ScriptedBackend):
        async def generate_until(self, requests):
            seen.extend(r.context for r in requests)
            return Answers(["ok"] * len(requests))

    server = background_loop.run(start_worker(Recording(CHAT_ENDPOINT)))
    messages = [{"role": "user", "content": "Hi"}]
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = ipb_grpc.InferenceServiceStub(channel)
            stub.GenerateUntil(ipb.GenerateUntilRequest(items=[ipb.GenerateItem(
                request_id="a", context=json.dumps(messages), chat_messages=True,
                params=ipb.GenerationParams(max_gen_toks=4))]), timeout=10)
            # An item that is not messages is refused on its own item, not the whole batch.
            refused = stub.GenerateUntil(ipb.GenerateUntilRequest(items=[ipb.GenerateItem(
                request_id="b", context="not json", chat_messages=True)]), timeout=10)
    finally:
        background_loop.run(server.stop(0.5))
    assert seen == [messages]
    error = refused.results[0].error
    assert not error.retryable and "items[0].context" in error.message


@pytest.mark.parametrize(("spec", "field"), [
    (cpb.EvaluationSpec(tasks=["arc_easy"], fewshot_as_multiturn=True),
     "spec.fewshot_as_multiturn"),
    (cpb.EvaluationSpec(tasks=["arc_easy"], chat_template_name="tool_use"),
     "spec.chat_template_name"),
])
def test_chat_options_without_apply_chat_template_are_refused(spec, field):
    from evalfleet.common.errors import InvalidArgumentError
    from evalfleet.server.spec import parse_spec

    with pytest.raises(InvalidArgumentError, match=field):
        parse_spec(spec)


def test_model_without_chat_template_refuses_chat_jobs(tmp_path, tiny_model_dir, services):
    import shutil

    from evalfleet.inference.server import load_backend

    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    backend = load_backend("hf", {"pretrained": str(model)}, 1)
    assert backend.model_info().capabilities.chat_template is ChatTemplateSupport.NONE
    with grpc.insecure_channel(services(backend)) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                tasks=["arc_easy"], limit=1, apply_chat_template=True)), timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "without a chat template" in err.value.details()


def test_cost_adds_up():
    total = Cost(positions_computed=3, retries=1)
    total.add(Cost(positions_computed=2, throttled_seconds=1.5))
    assert (total.positions_computed, total.retries, total.throttled_seconds) == (5, 1, 1.5)
    assert asyncio.iscoroutinefunction(Backend.loglikelihood)
