"""``local-completions`` against the real ``llama-cpp-python[server]`` (PyPI) serving the
SmolLM2-135M GGUF file that models/ was made from.

Its /v1/completions takes text prompts only (token ids, lm-eval's default, get HTTP 500
"Input should be a valid string", in lm-eval too) and echoes prompt logprobs that are wrong:
each is read from the distribution after its token instead of before it, and the generated
token's is missing (llama-cpp-python issues #1983 and #1276), so lm-eval would report wrong
numbers without a word. evalfleet's logprob probe catches both when the worker starts: the
token ids refused, prompts go as text from then on (said once), and a loglikelihood task is
refused before any work, saying the server's prompt logprobs are wrong and which checks failed,
while gsm8k generation runs. The CLI runs need neither api_key nor tokenized_requests.
"""

from __future__ import annotations

import importlib.util
import sys

import grpc
import pytest
from conftest import ServerProcess, free_port

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

pytestmark = pytest.mark.slow

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def llama_server(real_model_dir):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python[server] is not installed: run `make install`")
    gguf = real_model_dir / GGUF
    if not gguf.exists():
        pytest.fail(f"{gguf} missing: run `make install`")
    port = free_port()
    srv = ServerProcess([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                         "--model_alias", "smol", "--host", "127.0.0.1", "--port", str(port),
                         "--n_ctx", "2048", "--logits_all", "true", "--n_threads", "1"], port)
    yield srv
    srv.stop()


def test_wrong_prompt_logprobs_are_refused_before_any_work(llama_server, real_model_dir,
                                                          worker_and_coordinator):
    from evalfleet.inference.server import load_backend

    args = {"model": "smol", "base_url": llama_server.base_url, "api_key": "dummy",
            "tokenizer": str(real_model_dir), "tokenized_requests": False}
    backend = load_backend("local-completions", args)
    address = worker_and_coordinator(backend, args)
    caps = backend.model_info().capabilities
    assert caps.probe is not None and not caps.probe.passed, caps.probe
    assert not caps.loglikelihood and caps.generate_until
    failed = [f for f in caps.probe.findings if " FAILED: " in f]
    names = [f.split(" ")[0] for f in failed]
    assert "top-1" in names and "likelihood" in names, caps.probe.findings
    assert any("shifted by one position" in f for f in failed), failed
    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                tasks=["arc_easy"], limit=5)), timeout=300)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = err.value.details()
    for part in ("task arc_easy needs loglikelihood", "local-completions",
                 "the server's prompt logprobs are wrong or missing", *failed,
                 "Instead: serve the model with vLLM's OpenAI-compatible server"):
        assert part in message, (part, message)
    print("refusal:", message)


#: the one line saying that prompts go as text (the embedded worker's log, on the CLI's stderr)
TEXT_NOTE = "refuses prompts as token ids (HTTP 500: "


def _cli_eval(llama_server, real_model_dir, tmp_path, *flags: str):
    """`evalfleet eval --model local-completions` (embedded worker and coordinator) as a new
    user types it: no api_key, no tokenized_requests."""
    import os
    import subprocess

    from conftest import DATA_DIR, REPO_ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY")}
    env.update(EVALFLEET_DATA_DIR=str(DATA_DIR), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "evalfleet.client.cli", "eval", "--model", "local-completions",
         "--model_args", f"model=smol,base_url={llama_server.base_url},"
                         f"tokenizer={real_model_dir}",
         "--output_path", str(tmp_path), *flags],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)


def test_the_cli_refuses_arc_easy_naming_the_logprob_problem(llama_server, real_model_dir,
                                                             tmp_path):
    """The refusal is one line on stderr with the probe's finding, exit status 2."""
    done = _cli_eval(llama_server, real_model_dir, tmp_path, "--tasks", "arc_easy",
                     "--limit", "2")
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "task arc_easy needs loglikelihood" in done.stderr
    assert "the server's prompt logprobs are wrong or missing" in done.stderr
    assert "top-1 FAILED" in done.stderr
    for wrong in ("Traceback", "internal error", "Missing credentials",
                  "try tokenized_requests=false"):
        assert wrong not in done.stderr, done.stderr[-2000:]
    assert done.stderr.count(TEXT_NOTE) == 1, done.stderr[-2000:]


def test_the_cli_runs_gsm8k(llama_server, real_model_dir, tmp_path, lmeval_task_dir):
    """Generation runs (0-shot: the server computes every prompt position's logits on one
    thread, so a 5-shot prompt costs half a minute), and its generations are those of lm-eval's
    own local-completions on the same server."""
    import json

    done = _cli_eval(llama_server, real_model_dir, tmp_path, "--tasks", "gsm8k", "--limit", "2",
                     "--num_fewshot", "0", "--gen_kwargs", "max_gen_toks=32", "--log_samples")
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:], llama_server.log_tail())
    assert done.stderr.count(TEXT_NOTE) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    [results] = tmp_path.glob("smol/results_*.json")
    assert "exact_match,strict-match" in json.loads(results.read_text())["results"]["gsm8k"]
    [samples] = tmp_path.glob("smol/samples_gsm8k_*.jsonl")
    samples = [json.loads(line) for line in samples.read_text().splitlines()]
    assert {s["doc_id"] for s in samples} == {0, 1}
    assert all(isinstance(s["resps"][0][0], str) for s in samples)
    from lm_eval import simple_evaluate
    from parity_values import assert_samples_parity, lmeval_task_manager

    theirs = simple_evaluate(
        model="local-completions", model_args=f"model=smol,base_url={llama_server.base_url}"
        f"/completions,tokenizer={real_model_dir},tokenized_requests=False", tasks=["gsm8k"],
        limit=2, num_fewshot=0, gen_kwargs="max_gen_toks=32", log_samples=True,
        bootstrap_iters=0,
        task_manager=lmeval_task_manager(lmeval_task_dir, tmp_path / "lm_tasks", ["gsm8k"]))
    assert_samples_parity(samples, theirs["samples"]["gsm8k"])
    assert {s["resps"][0][0] for s in samples} != {""}


def test_token_id_prompts_refused_by_the_server_are_sent_as_text(llama_server, real_model_dir,
                                                                 monkeypatch):
    import asyncio
    import re

    from evalfleet.inference.server import load_backend

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = load_backend("local-completions", {
        "model": "smol", "base_url": llama_server.base_url,
        "tokenizer": str(real_model_dir), "max_retries": 1})

    async def start():
        try:
            await backend.start()
        finally:
            await backend.close()

    asyncio.run(start())
    note = backend.text_prompts_note
    assert note and TEXT_NOTE in note and "Input should be a valid string" in note, note
    assert not re.search(r"\d+, \d+, \d+, \d+", note), note  # no token ids quoted
    assert not backend.args.tokenized_requests
    caps = backend.model_info().capabilities
    assert caps.probe.findings[0] == f"prompts ok: {note}"
    # the probe then ran on text, and found the logprobs themselves wrong
    assert not caps.loglikelihood and caps.generate_until
    assert "the server's prompt logprobs are wrong or missing" in \
        caps.logprobs_unavailable_reason
    assert "top-1 FAILED" in caps.logprobs_unavailable_reason


def test_formatted_tasks_run_on_the_chat_endpoint(llama_server, real_model_dir,
                                                  worker_and_coordinator, coordinator):
    """kobest_hellaswag@generate and arc_easy@generate through local-chat-completions on the
    server's /v1/chat/completions: what it received, rendered with SmolLM2's template, is the
    hf backend's prompt (formatted_chat_runs holds the checks)."""
    import json

    from formatted_chat_runs import run_and_check
    from recording_proxy import RecordingProxy

    from evalfleet.inference.server import load_backend

    proxy = RecordingProxy(f"http://127.0.0.1:{llama_server.port}")
    try:
        args = {"model": "smol", "base_url": f"{proxy.base_url}/chat/completions"}
        address = worker_and_coordinator(load_backend("local-chat-completions", args), args)
        results = run_and_check(address, proxy, coordinator.address, real_model_dir,
                                llama_server.log_tail())
    finally:
        proxy.stop()
    print("llama-cpp-python server:", json.dumps(results["results"], sort_keys=True))
