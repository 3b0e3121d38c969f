"""``local-completions`` against the real ``llama-cpp-python[server]`` (PyPI) serving the
SmolLM2-135M GGUF file that models/ was made from.

Its /v1/completions takes text prompts only (token ids, lm-eval's default, get HTTP 500) and
echoes prompt logprobs that are wrong: each is read from the distribution after its token
instead of before it, and the generated token's is missing (llama-cpp-python issues #1983 and
#1276), so lm-eval would report wrong numbers without a word. evalfleet's logprob probe catches
both when the worker starts: a loglikelihood task is refused before any work, saying the
server's prompt logprobs are wrong and which checks failed, while gsm8k generation runs.
"""

from __future__ import annotations

import importlib.util
import sys

import grpc
import pytest
from conftest import ServerProcess, free_port, run_evaluation

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


def test_wrong_prompt_logprobs_are_refused_and_generation_runs(llama_server, real_model_dir,
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

    final, _, results, samples = run_evaluation(address, cpb.EvaluationSpec(
        model="local-completions", tasks=["gsm8k"], limit=2, log_samples=True,
        bootstrap_iters=0, gen_kwargs="max_gen_toks=64"))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, (final.error, llama_server.log_tail())
    assert {s["doc_id"] for s in samples["gsm8k"]} == {0, 1}
    assert all(isinstance(s["resps"][0][0], str) for s in samples["gsm8k"])
    assert "exact_match,strict-match" in results["results"]["gsm8k"]


def test_the_cli_prints_the_reason_and_exits_2(llama_server, real_model_dir, tmp_path):
    """`evalfleet eval --model local-completions ...` (embedded worker and coordinator): the
    refusal is one line on stderr with the probe's finding, exit status 2."""
    import os
    import subprocess

    from conftest import DATA_DIR, REPO_ROOT

    env = {**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "evalfleet.client.cli", "eval", "--model", "local-completions",
         "--model_args", f"model=smol,base_url={llama_server.base_url},api_key=dummy,"
                         f"tokenizer={real_model_dir},tokenized_requests=false",
         "--tasks", "hellaswag", "--limit", "2", "--output_path", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "task hellaswag needs loglikelihood" in done.stderr
    assert "the server's prompt logprobs are wrong or missing" in done.stderr
    assert "top-1 FAILED" in done.stderr and "Traceback" not in done.stderr


def test_token_id_prompts_refused_by_the_server_are_named_with_the_way_out(llama_server,
                                                                          real_model_dir):
    import asyncio

    from evalfleet.inference.server import load_backend

    backend = load_backend("local-completions", {
        "model": "smol", "base_url": llama_server.base_url, "api_key": "dummy",
        "tokenizer": str(real_model_dir), "max_retries": 1})

    async def start():
        try:
            await backend.start()
        finally:
            await backend.close()

    asyncio.run(start())
    caps = backend.model_info().capabilities
    assert not caps.loglikelihood
    assert "refused a prompt-logprobs request" in caps.logprobs_unavailable_reason
    assert "try tokenized_requests=false" in caps.logprobs_unavailable_reason
