"""Chat-completions backends against a real OpenAI-compatible chat server: ``transformers
serve`` (from ``transformers[serving]``) serving the tiny model from its local directory,
offline.

* asked for hellaswag or arc_easy, the job is refused with FAILED_PRECONDITION saying chat
  endpoints return no prompt logprobs; without --apply_chat_template it is refused too;
* gsm8k with --apply_chat_template runs, the conversation reaching the server as messages;
* local-completions against the same server's /v1/completions (which ignores ``echo`` and
  ``logprobs``) fails the logprob probe, so its loglikelihood tasks are refused with the reason.

Payloads are compared with lm-eval's ``_create_payload`` for the same conversations.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import grpc
import pytest
from conftest import ServerProcess, free_port, run_evaluation

from evalfleet.inference.backends.base import GenerationParams, GenerationRequest
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc


def _transformers_cli() -> str:
    return str(Path(sys.executable).parent / "transformers")


@pytest.fixture(scope="module")
def transformers_serve(tiny_model_dir):
    """`transformers serve <dir>` on a loopback port (the real chat server, offline)."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available() or not shutil.which(_transformers_cli()):
        pytest.fail("transformers[serving] is not installed: run `make install`")
    port = free_port()
    srv = ServerProcess([_transformers_cli(), "serve", str(tiny_model_dir), "--host",
                         "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype",
                         "float32"], port, ready_path="/health",
                        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    srv.model = str(tiny_model_dir)
    yield srv
    srv.stop()


def _chat_backend(srv):
    from evalfleet.inference.server import load_backend

    args = {"model": srv.model, "base_url": f"{srv.base_url}/chat/completions",
            "api_key": "dummy"}
    return load_backend("local-chat-completions", args), args


def _refusal(address: str, spec: cpb.EvaluationSpec) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=300)
    return err.value


def test_chat_endpoint_refuses_loglikelihood_tasks_and_runs_gsm8k(transformers_serve,
                                                                 worker_and_coordinator,
                                                                 lmeval_task_dir, tmp_path):
    backend, args = _chat_backend(transformers_serve)
    address = worker_and_coordinator(backend, args)
    for task in ("hellaswag", "arc_easy"):
        error = _refusal(address, cpb.EvaluationSpec(tasks=[task], limit=2,
                                                     apply_chat_template=True))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        for part in (f"task {task} needs loglikelihood", "local-chat-completions",
                     "chat endpoints return no prompt logprobs", "Instead: point "
                     "local-completions at the same server's /v1/completions"):
            assert part in error.details(), (part, error.details())
    error = _refusal(address, cpb.EvaluationSpec(tasks=["gsm8k"], limit=2))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--apply_chat_template" in error.details()

    final, events, results, samples = run_evaluation(address, cpb.EvaluationSpec(
        model="local-chat-completions", tasks=["gsm8k"], limit=2, apply_chat_template=True,
        log_samples=True, bootstrap_iters=0, gen_kwargs="max_gen_toks=16"))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, (final.error,
                                                           transformers_serve.log_tail())
    assert {s["doc_id"] for s in samples["gsm8k"]} == {0, 1}
    for sample in samples["gsm8k"]:
        messages = json.loads(sample["arguments"]["gen_args_0"]["arg_0"])
        assert messages[-1]["role"] == "user" and "Question:" in messages[-1]["content"]
        assert isinstance(sample["resps"][0][0], str)
    assert "exact_match,strict-match" in results["results"]["gsm8k"]
    # lm-eval's own local-chat-completions on the same server: the same generations, filtered
    # answers and per-sample values
    from lm_eval import simple_evaluate
    from parity_values import assert_samples_parity, lmeval_task_manager

    theirs = simple_evaluate(
        model="local-chat-completions", model_args=f"model={args['model']},"
        f"base_url={args['base_url']}", tasks=["gsm8k"], limit=2, apply_chat_template=True,
        log_samples=True, bootstrap_iters=0, gen_kwargs="max_gen_toks=16",
        task_manager=lmeval_task_manager(lmeval_task_dir, tmp_path / "lm_tasks", ["gsm8k"]))
    assert_samples_parity(samples["gsm8k"], theirs["samples"]["gsm8k"])
    assert {s["resps"][0][0] for s in samples["gsm8k"]} != {""}


def test_completions_endpoint_without_echo_logprobs_fails_the_probe(transformers_serve,
                                                                    worker_and_coordinator,
                                                                    tiny_model_dir):
    from evalfleet.inference.server import load_backend

    args = {"model": transformers_serve.model, "base_url": transformers_serve.base_url,
            "tokenizer": str(tiny_model_dir)}
    # token-id prompts (lm-eval's default) are refused by this server (HTTP 400): the worker
    # sends text from then on, says so, and the probe finds no echoed logprobs in the answers
    backend = load_backend("local-completions", args)
    address = worker_and_coordinator(backend, args)
    note = backend.text_prompts_note
    assert note and "refuses prompts as token ids (HTTP 400: " in note \
        and "prompt must be a string" in note, note
    caps = backend.model_info().capabilities
    assert caps.probe.findings[0] == f"prompts ok: {note}"
    assert not caps.loglikelihood and caps.probe is not None and not caps.probe.passed
    error = _refusal(address, cpb.EvaluationSpec(tasks=["arc_easy"], limit=2))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    for part in ("task arc_easy needs loglikelihood", "prompt logprobs are wrong or missing",
                 "carries no logprobs", "vLLM's OpenAI-compatible server"):
        assert part in error.details(), (part, error.details())


def _request(**kw) -> GenerationRequest:
    return GenerationRequest([{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "2+2?"}],
                             GenerationParams.from_gen_kwargs(kw))


@pytest.mark.parametrize("gen_kwargs", [
    {"until": ["Question:", "</s>", "<|im_end|>", "\n\n", "Q:"], "do_sample": False,
     "temperature": 0.0},
    {"until": ["\n"], "do_sample": True, "temperature": 0.5, "top_p": 0.9, "max_gen_toks": 8},
])
@pytest.mark.parametrize("model", ["smol", "gpt-4o-2024-05-13", "o3-mini"])
def test_chat_payloads_are_lm_evals(gen_kwargs, model, monkeypatch):
    from lm_eval.models.openai_completions import LocalChatCompletion, OpenAIChatCompletion

    from evalfleet.inference.backends.openai_chat import LocalChatBackend, OpenAIChatBackend

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    request = _request(**gen_kwargs)
    for ours_cls, theirs_cls, base in (
            (LocalChatBackend, LocalChatCompletion, "http://127.0.0.1:1/v1"),
            (OpenAIChatBackend, OpenAIChatCompletion, None)):
        args = {"model": model, **({"base_url": base} if base else {})}
        ours = ours_cls.from_model_args(args).payload(request.context, request)
        lm = theirs_cls(model=model, **({"base_url": base} if base else {}))
        raw = dict(gen_kwargs)
        # lm-eval's num_concurrent=1 path passes eos=self.eos_string: None without a tokenizer
        theirs = lm._create_payload(request.context, generate=True, gen_kwargs=raw, eos=None,
                                    seed=1234)
        assert ours == theirs, (ours_cls.name, ours, theirs)


def test_formatted_tasks_run_on_the_real_chat_server(transformers_serve, worker_and_coordinator,
                                                     coordinator, tiny_model_dir):
    """kobest_hellaswag@generate and arc_easy@generate on `transformers serve`: what the server
    received, rendered with the model's template, is the hf backend's prompt (formatted_chat_runs
    holds the checks)."""
    from formatted_chat_runs import run_and_check
    from recording_proxy import RecordingProxy

    from evalfleet.inference.server import load_backend

    proxy = RecordingProxy(f"http://127.0.0.1:{transformers_serve.port}")
    try:
        args = {"model": transformers_serve.model, "base_url": f"{proxy.base_url}/chat/completions",
                "api_key": "dummy"}
        address = worker_and_coordinator(load_backend("local-chat-completions", args), args)
        results = run_and_check(address, proxy, coordinator.address, tiny_model_dir,
                                transformers_serve.log_tail())
    finally:
        proxy.stop()
    print("transformers serve:", json.dumps(results["results"], sort_keys=True))
