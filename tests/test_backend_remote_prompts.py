"""The first requests to an OpenAI-compatible server, as a new user makes them.

* ``local-completions`` / ``local-chat-completions`` without ``api_key`` start (the ``openai``
  client refuses to start without a key) and send no Authorization header; the hosted
  ``openai-*`` backends say in one line that they need OPENAI_API_KEY.
* A server that refuses token-id prompts (llama-cpp-python's HTTP 500 "Input should be a valid
  string"; tests/servers/openai_compat.py ``--text-prompts-only`` answers alike) is sent text
  from then on, with lm-eval's ``tokenized_requests=false`` payloads, and the user is told once.
* A request that fails on every try fails the job with the error said once, without the
  prompt's token ids the server quoted.

The real llama-cpp-python server is exercised in test_backend_llamacpp.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request

import pytest
from conftest import openai_test_server, recorded_requests, run_evaluation

from evalfleet.inference.backends.base import BackendArgumentError, GenerationParams
from evalfleet.v1 import coordinator_pb2 as cpb

#: four or more comma-separated integers: a quoted token-id list
TOKEN_LIST = re.compile(r"\d+\s*,\s*\d+\s*,\s*\d+\s*,\s*\d+")


@pytest.fixture()
def no_openai_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)


@pytest.fixture(scope="module")
def text_only_server(tiny_model_dir, tmp_path_factory):
    record = tmp_path_factory.mktemp("record") / "requests.jsonl"
    srv = openai_test_server(tiny_model_dir, "--text-prompts-only", "--record", str(record))
    srv.record = record
    yield srv
    srv.stop()


def _set_mode(server, **mode) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/admin/mode",
                                     data=json.dumps(mode).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def test_hosted_openai_backends_need_a_key_in_one_line(no_openai_key):
    from evalfleet.inference.server import load_backend

    for name in ("openai-completions", "openai-chat-completions"):
        with pytest.raises(BackendArgumentError) as err:
            load_backend(name, {"model": "gpt-4o-mini"})
        message = str(err.value)
        assert message == (f"model_args.api_key: the {name} backend needs an API key: set "
                           "OPENAI_API_KEY or pass api_key=..."), message


def test_a_local_chat_backend_starts_without_a_key(no_openai_key):
    """The openai client raised "Missing credentials" here, which reached the user as
    "internal error: OpenAIError: ..."."""
    from evalfleet.inference.server import load_backend

    backend = load_backend("local-chat-completions",
                           {"model": "m", "base_url": "http://127.0.0.1:9/v1"})

    async def start_and_close():
        await backend.start()
        assert backend.client is not None
        await backend.close()

    asyncio.run(start_and_close())


def test_an_unreadable_answer_is_an_item_error_not_an_exception(no_openai_key):
    from evalfleet.inference.server import load_backend

    backend = load_backend("local-chat-completions",
                           {"model": "m", "base_url": "http://127.0.0.1:9/v1"})

    async def make(cost):
        return json.loads("<html>not found</html>")

    answers = asyncio.run(backend.fan_out([([0, 1], make)], 2, "generate_until"))
    for error in answers.results:
        assert error.retryable
        assert error.message.startswith("generate_until: the server's answer could not be "
                                        "read (JSONDecodeError: ")
        assert "check that base_url is the server's API root" in error.message


def test_server_errors_lose_the_token_ids_and_tracebacks_they_quote():
    from evalfleet.inference.backends.api_http import condense, without_token_lists

    llama_cpp_python = (  # its HTTP 500 for token-id prompts, whitespace joined
        "2 validation errors: {'type': 'string_type', 'loc': ('body', 'prompt', 'str'), 'msg': "
        "'Input should be a valid string', 'input': [[1, 2, 3, 4, 5]]} {'type': 'string_type', "
        "'loc': ('body', 'prompt', 'list[str]', 0), 'msg': 'Input should be a valid string', "
        "'input': [1, 2, 3, 4, 5]} File \"/x/llama_cpp/server/app.py\", line 264, in "
        "create_completion POST /v1/completions")
    assert condense(llama_cpp_python) == "2 validation errors: Input should be a valid string"
    assert condense("engine died Traceback (most recent call last): File \"a.py\", line 1") \
        == "engine died"

    pydantic = ("1 validation error for CreateCompletionRequest prompt Input should be a valid "
                "string [type=string_type, input_value=[[1, 4093, 28, 1780, 17]], "
                "input_type=list]")
    assert without_token_lists(pydantic) == (
        "1 validation error for CreateCompletionRequest prompt Input should be a valid string "
        "[type=string_type, input_value=..., input_type=list]")
    assert without_token_lists("bad prompt [[5, 6, 7, 8, 9]] of 2 [1, 2]") == \
        "bad prompt [...] of 2 [1, 2]"


def test_no_key_no_authorization_and_text_after_a_token_id_refusal(
        text_only_server, tiny_model_dir, no_openai_key):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from evalfleet.inference.backends.base import GenerationRequest
    from evalfleet.inference.server import load_backend

    args = {"model": "smol", "base_url": text_only_server.base_url,
            "tokenizer": str(tiny_model_dir)}
    backend = load_backend("local-completions", args)
    assert backend.args.tokenized_requests and backend.args.max_retries == 3  # lm-eval's
    raw = {"until": ["Question:"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 4}
    request = GenerationRequest("Question: 2+2?\nAnswer:", GenerationParams.from_gen_kwargs(raw))
    mark = len(recorded_requests(text_only_server))

    async def run():
        await backend.start()
        try:
            return await backend.generate_until([request])
        finally:
            await backend.close()

    [answer] = asyncio.run(run()).results
    assert isinstance(answer, str), answer
    sent = recorded_requests(text_only_server)[mark:]
    assert [r["authorization"] for r in sent] == [None] * len(sent)
    # the probe's token ids were refused once (not retried), then everything went as text
    assert isinstance(sent[0]["body"]["prompt"][0], list)
    assert all(isinstance(r["body"]["prompt"], str) for r in sent[1:]), sent
    note = backend.text_prompts_note
    assert note == (f"the server at {text_only_server.base_url} refuses prompts as token ids "
                    "(HTTP 500: 2 validation errors: Input should be a valid string) and takes "
                    "them as text, so prompts are sent as text from now on (as with model_args "
                    "tokenized_requests=false)"), note
    assert backend.probe.result.findings[0] == f"prompts ok: {note}"
    # the generation request is lm-eval's with tokenized_requests=false
    theirs = LocalCompletionsAPI(tokenizer_backend="huggingface", tokenized_requests=False,
                                 **args)
    expected = theirs._create_payload(theirs.create_message([request.context]), generate=True,
                                      gen_kwargs=dict(raw), seed=1234, eos=theirs.eos_string)
    assert sent[-1]["body"] == expected


def test_a_request_failing_on_every_try_says_its_error_once(
        text_only_server, tiny_model_dir, worker_and_coordinator, no_openai_key):
    from evalfleet.inference.server import load_backend

    args = {"model": "smol", "base_url": text_only_server.base_url,
            "tokenizer": str(tiny_model_dir), "max_retries": 1}
    _set_mode(text_only_server, fail=500)
    try:
        backend = load_backend("local-completions", args)
        address = worker_and_coordinator(backend, args)
        final, _, _, _ = run_evaluation(address, cpb.EvaluationSpec(
            model="local-completions", tasks=["gsm8k"], limit=1, bootstrap_iters=0,
            gen_kwargs="max_gen_toks=4"), timeout_s=120)
    finally:
        _set_mode(text_only_server, fail=0)
    assert final.state == cpb.EVALUATION_STATE_FAILED
    error = final.error
    assert "failed on every try (3 tries)" in error, error
    assert error.count("HTTP 500: the engine failed on prompt") == 1, error
    assert not TOKEN_LIST.search(error), error
    assert "internal error" not in error and "\n" not in error
