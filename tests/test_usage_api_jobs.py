"""Token usage and cost of API jobs, against the stand-ins' own counts (issue 26, "What a job
costs"; issue 23, usage per task and job).

A real coordinator and worker on loopback run a loglikelihood task (arc_easy) and a generation
task (gsm8k) through ``local-completions`` against tests/servers/openai_compat.py serving
SmolLM2-135M (a random model fails the logprob probe), with a prompt cache (a document's
choices share their context, so later choices read it from the cache). The results'
``evalfleet_usage`` per task and per job equal what the stand-in itself reported in its answers
(``GET /admin/stats``: by request kind, echo scoring vs generation); the Watch events carry the
usage as it grows; a price table gives the cost of exactly those tokens; the same job again is
answered from the answer store and counts nothing. The same for a generation job through
``anthropic-chat`` against the Messages stand-in.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from conftest import (
    anthropic_test_server,
    openai_test_server,
    run_evaluation,
)

from evalfleet.v1 import coordinator_pb2 as cpb

TOKENS = ("prompt_tokens", "cached_tokens", "completion_tokens")
PRICE = cpb.ModelPrice(model="smol", input_per_million=1.0, cached_input_per_million=0.25,
                       output_per_million=4.0)


def _stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/stats", timeout=10) as r:
        return json.loads(r.read())["usage"]


def _delta(after: dict, before: dict) -> dict:
    return {k: _delta(v, before.get(k, {})) if isinstance(v, dict) else v - before.get(k, 0)
            for k, v in after.items()}


def _cost(counts: dict) -> float:
    return ((counts["prompt_tokens"] - counts["cached_tokens"]) * 1.0
            + counts["cached_tokens"] * 0.25 + counts["completion_tokens"] * 4.0) / 1e6


@pytest.fixture(scope="module")
def completions_server(real_model_dir):
    srv = openai_test_server(real_model_dir, "--prompt-cache-block", "4")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def completions_job(background_loop, data_dir, completions_server, real_model_dir):
    """The job run twice on one coordinator: (first run, second run, stand-in deltas)."""
    from evalfleet.inference.server import load_backend, start_worker
    from evalfleet.server.service import start_coordinator

    args = {"model": "smol", "base_url": completions_server.base_url,
            "tokenizer": str(real_model_dir), "probe_interval_s": 3600, "batch_size": 2}
    worker = background_loop.run(start_worker(load_backend("local-completions", args),
                                              model_args=args))
    coordinator, _ = background_loop.run(start_coordinator(workers=[worker.address],
                                                           data_dir=data_dir))
    spec = cpb.EvaluationSpec(model="local-completions", tasks=["arc_easy", "gsm8k"], limit=2,
                              num_fewshot=0, bootstrap_iters=0, gen_kwargs="max_gen_toks=6",
                              price_table=cpb.PriceTable(currency="EUR", models=[PRICE]))
    try:
        port = completions_server.port
        before = _stats(port)
        first = run_evaluation(coordinator.address, spec)
        middle = _stats(port)
        spec.price_table.models[0].model = "another-model"
        second = run_evaluation(coordinator.address, spec)
        after = _stats(port)
    finally:
        background_loop.run(coordinator.stop(0.5))
        background_loop.run(worker.stop(0.5))
    return first, second, _delta(middle, before), _delta(after, middle)


@pytest.mark.slow  # the stand-in serves the real SmolLM2 (its logprobs pass the probe)
def test_usage_per_task_and_job_equals_the_stand_ins_count(completions_job):
    (final, _, results, _), _, spent, _ = completions_job
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    usage = results["evalfleet_usage"]
    scoring, generating = spent["echo"], spent["generate"]
    for task, counted in (("arc_easy", scoring), ("gsm8k", generating)):
        assert {k: usage["tasks"][task][k] for k in TOKENS} == {k: counted[k] for k in TOKENS}
    assert {k: usage["total"][k] for k in TOKENS} == {k: spent[k] for k in TOKENS}
    assert usage["tasks"]["arc_easy"]["cached_tokens"] > 0  # the choices' shared context
    assert usage["tasks"]["gsm8k"]["completion_tokens"] > 0
    assert usage["total"]["requests"] == sum(t["requests"] for t in usage["tasks"].values())
    assert usage["tasks"]["gsm8k"]["requests"] == 2
    assert "reasoning_tokens" in usage["total"]


@pytest.mark.slow  # the stand-in serves the real SmolLM2 (its logprobs pass the probe)
def test_price_table_gives_the_cost_of_the_counted_tokens(completions_job):
    (_, _, results, _), _, spent, _ = completions_job
    usage = results["evalfleet_usage"]
    assert usage["currency"] == "EUR"
    assert usage["price"]["model"] == "smol" and usage["price"]["batch_api"] is False
    assert usage["tasks"]["arc_easy"]["cost"] == pytest.approx(_cost(spent["echo"]))
    assert usage["tasks"]["gsm8k"]["cost"] == pytest.approx(_cost(spent["generate"]))
    assert usage["total"]["cost"] == pytest.approx(_cost(spent))
    assert usage["total"]["cost"] > 0


@pytest.mark.slow  # the stand-in serves the real SmolLM2 (its logprobs pass the probe)
def test_watch_events_carry_the_usage_as_it_grows(completions_job):
    (_, events, results, _), _, _, _ = completions_job
    seen = [e.usage.prompt_tokens for e in events]
    assert seen == sorted(seen)  # never goes down
    total = results["evalfleet_usage"]["total"]
    last = events[-1].usage
    assert (last.prompt_tokens, last.cached_tokens, last.completion_tokens) == tuple(
        total[k] for k in TOKENS)
    assert last.currency == "EUR" and last.cost == pytest.approx(total["cost"])
    running = [e for e in events if e.state == cpb.EVALUATION_STATE_RUNNING]
    assert any(e.usage.prompt_tokens > 0 for e in running)  # spend is visible while it runs


@pytest.mark.slow  # the stand-in serves the real SmolLM2 (its logprobs pass the probe)
def test_answers_from_the_store_are_not_counted_and_an_unpriced_model_gets_a_note(
        completions_job):
    _, (final, _, results, _), _, second_spent = completions_job
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    assert second_spent.get("responses") == 0  # the stand-in was not asked again
    usage = results["evalfleet_usage"]
    assert all(usage["total"][k] == 0 for k in ("requests", *TOKENS))
    assert "cost" not in usage["total"] and "currency" not in usage
    assert "no price for model 'smol'" in usage["note"]
    assert "\n" not in usage["note"]


def test_anthropic_usage_counts_cache_reads_as_the_stand_in_does(
        background_loop, data_dir, tiny_model_dir, worker_and_coordinator):
    from evalfleet.inference.server import load_backend

    srv = anthropic_test_server(tiny_model_dir, "--prompt-cache-block", "4")
    try:
        args = {"model": "claude-stand-in", "base_url": f"{srv.base_url}/messages",
                "api_key": "test-key"}
        address = worker_and_coordinator(load_backend("anthropic", args), args)
        final, _, results, _ = run_evaluation(address, cpb.EvaluationSpec(
            model="anthropic", tasks=["gsm8k"], limit=2, bootstrap_iters=0,
            apply_chat_template=True, gen_kwargs="max_gen_toks=6"))
        spent = _stats(srv.port)
    finally:
        srv.stop()
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    usage = results["evalfleet_usage"]["tasks"]["gsm8k"]
    assert {k: usage[k] for k in TOKENS} == {k: spent[k] for k in TOKENS}
    assert usage["cached_tokens"] > 0  # the chat template's shared system prefix
    assert usage["requests"] == 2
