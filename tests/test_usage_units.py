"""Usage and cost accounting in pieces: the APIs' usage shapes, a call's usage shared out over
its requests, the dedupe rule, pricing (batch discount, a model missing from the table), and
price tables refused with one line naming the file (or the spec field) and the key."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.price_table import load_price_table
from evalfleet.inference.backends.base import Cost, ItemError, TokenScores
from evalfleet.inference.backends.reasoning import GeneratedText
from evalfleet.inference.backends.token_usage import (
    TokenUsage,
    add_usage,
    parse_usage,
    with_call_usage,
)
from evalfleet.server.dispatch import TaskOwners
from evalfleet.server.store import AnswerSlices
from evalfleet.server.usage import JobUsage, job_pricing, usage_section
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc
from evalfleet.v1 import inference_pb2 as ipb


def test_openai_usage_with_cached_and_reasoning_tokens():
    usage = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
             "prompt_tokens_details": {"cached_tokens": 1024},
             "completion_tokens_details": {"reasoning_tokens": 256}}
    assert parse_usage(usage) == TokenUsage(1200, 1024, 300, 256)
    assert parse_usage(None) == TokenUsage()


def test_anthropic_usage_counts_cache_reads_and_writes_as_prompt_tokens():
    # Anthropic's input_tokens leaves out what was read from (or written to) the cache
    usage = {"input_tokens": 50, "cache_read_input_tokens": 1000,
             "cache_creation_input_tokens": 200, "output_tokens": 70}
    assert parse_usage(usage) == TokenUsage(1250, 1000, 70, 0)


def test_a_calls_usage_is_shared_out_over_its_answers_exactly():
    async def call(cost: Cost) -> list:
        add_usage(cost, {"prompt_tokens": 10, "completion_tokens": 3,
                         "prompt_tokens_details": {"cached_tokens": 4}})
        add_usage(cost, {"prompt_tokens": 1, "completion_tokens": 0})  # a second response
        scores = TokenScores(np.zeros(1, np.float32), np.ones(1, bool))
        return [scores, ItemError("bad"), scores, GeneratedText("x")]

    cost = Cost()
    outcomes = asyncio.run(with_call_usage(call(cost)))
    shares = [o.usage if isinstance(o, TokenScores) else o for o in outcomes]
    assert shares[0] == TokenUsage(4, 2, 1, 0) and shares[2] == TokenUsage(4, 1, 1, 0)
    assert isinstance(shares[1], ItemError)
    assert (outcomes[3].prompt_tokens, outcomes[3].cached_tokens,
            outcomes[3].completion_tokens) == (3, 1, 1)
    assert (cost.prompt_tokens, cost.cached_tokens, cost.completion_tokens) == (11, 4, 3)


def _answers(usages: list[tuple[int, int, int]]) -> AnswerSlices:
    raw, starts, ends = b"", [], []
    for i, (p, c, o) in enumerate(usages):
        data = ipb.TokenScores(request_id=f"r{i}", prompt_tokens=p, cached_tokens=c,
                               completion_tokens=o).SerializeToString()
        starts.append(len(raw))
        raw += data
        ends.append(len(raw))
    return AnswerSlices([f"r{i}" for i in range(len(usages))], raw, np.array(starts),
                        np.array(ends))


def test_a_request_shared_by_two_tasks_counts_once_for_the_first():
    from evalfleet.server import dispatch

    task_owners = getattr(dispatch, "task_owners", None) or dispatch._task_owners  # renamed
    tasks = [SimpleNamespace(answer_ids=["a", "b"]), SimpleNamespace(answer_ids=["b", "c"])]
    job = SimpleNamespace(plan=SimpleNamespace(tasks=tasks))
    owners = TaskOwners(["a", "b", "c"], *task_owners(job))
    usage = JobUsage()
    usage.count_batch("loglikelihood", _answers([(10, 0, 1), (20, 8, 1), (40, 0, 1)]),
                      owners.first[np.arange(3)], ["t1", "t2"], worker_counted=True)
    assert usage.tasks["t1"].as_dict() == {"requests": 2, "prompt_tokens": 30,
                                           "cached_tokens": 8, "completion_tokens": 2,
                                           "reasoning_tokens": 0}
    assert usage.tasks["t2"].prompt_tokens == 40 and usage.tasks["t2"].requests == 1
    assert usage.total().prompt_tokens == 70


def _table(**row) -> cpb.PriceTable:
    return cpb.PriceTable(currency="USD", source="p.yaml", models=[cpb.ModelPrice(
        model="gpt-x", input_per_million=2.0, cached_input_per_million=0.5,
        output_per_million=8.0, **row)])


def test_batch_api_jobs_are_priced_at_the_batch_rate():
    usage = JobUsage()
    usage.count_batch("loglikelihood", _answers([(1_000_000, 400_000, 250_000)]),
                      np.zeros(1, np.int64), ["t"], worker_counted=True)
    spec = cpb.EvaluationSpec(price_table=_table(batch_discount=0.5))
    online = usage_section(usage, ["t"], job_pricing(spec, {"model": "gpt-x"}, ""))
    batch = usage_section(usage, ["t"], job_pricing(spec, {"model": "gpt-x",
                                                           "batch_api": "true"}, ""))
    expected = 0.6 * 2.0 + 0.4 * 0.5 + 0.25 * 8.0  # 3.4
    assert online["tasks"]["t"]["cost"] == pytest.approx(expected)
    assert batch["tasks"]["t"]["cost"] == pytest.approx(expected / 2)
    assert batch["total"]["cost"] == pytest.approx(expected / 2)
    assert batch["price"]["batch_api"] is True and batch["currency"] == "USD"


def test_a_model_missing_from_the_table_gets_no_cost_and_a_note():
    usage = JobUsage()
    usage.count_batch("loglikelihood", _answers([(100, 0, 1)]), np.zeros(1, np.int64), ["t"],
                      worker_counted=True)
    spec = cpb.EvaluationSpec(price_table=_table())
    section = usage_section(usage, ["t"], job_pricing(spec, {"pretrained": "other"}, ""))
    assert "cost" not in section["tasks"]["t"] and "cost" not in section["total"]
    assert section["note"] == ("no price for model 'other' in the price table (p.yaml) (it "
                               "has: gpt-x): usage is reported without a cost")


GOOD = """currency: USD
models:
  gpt-4o-mini: {input: 0.15, cached_input: 0.075, output: 0.6, batch_discount: 0.5}
  claude-x:
    input: 3
    output: 15
"""


def test_a_price_table_file_is_read_yaml_or_json(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text(GOOD)
    table = load_price_table(str(path))
    assert table.currency == "USD" and table.source == "prices.yaml"
    first, second = table.models
    assert (first.model, first.input_per_million, first.cached_input_per_million,
            first.output_per_million, first.batch_discount) == ("gpt-4o-mini", 0.15, 0.075,
                                                                0.6, 0.5)
    assert not second.HasField("cached_input_per_million")  # priced as input
    json_path = tmp_path / "prices.json"
    json_path.write_text('{"currency": "EUR", "models": {"m": {"input": 1, "output": 2}}}')
    assert load_price_table(str(json_path)).models[0].output_per_million == 2.0


@pytest.mark.parametrize(("text", "expected"), [
    ("models: {m: {input: 1, output: 2}}", "'currency' must name"),
    ("currency: USD\nmodels: {m: {input: 1}}", "'models.m.output' is missing"),
    ("currency: USD\nmodels: {m: {input: -1, output: 2}}", "'models.m.input' must be a finite"),
    ("currency: USD\nmodels: {m: {input: 1, output: 2, outptu: 3}}",
     "unknown key 'models.m.outptu'"),
    ("currency: USD\nmodels: {m: {input: 1, output: two}}", "'models.m.output' must be a number"),
    ("currency: USD\nmodels: {m: {input: 1, output: 2, batch_discount: 1.5}}",
     "'models.m.batch_discount' must be a fraction"),
    ("currency: USD\nmodels: [1, 2]", "'models' must map"),
    ("currency: [", "not valid YAML"),
])
def test_bad_price_tables_are_refused_naming_the_file_and_key(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError) as info:
        load_price_table(str(path))
    assert info.value.message.startswith(f"--price_table {path}: ")
    assert expected in info.value.message and "\n" not in info.value.message


def test_the_cli_refuses_a_bad_price_table_in_one_line(tmp_path, repo_root):
    path = tmp_path / "p.yaml"
    path.write_text("currency: USD\nmodels: {m: {input: 1}}")
    proc = subprocess.run(
        [sys.executable, "-m", "evalfleet.client.cli", "eval", "--model", "hf", "--model_args",
         "pretrained=x", "--tasks", "arc_easy", "--price_table", str(path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--price_table {path}: 'models.m.output' is missing" in lines[0]


def test_create_evaluation_refuses_a_bad_price_table_naming_the_field(coordinator):
    bad = cpb.PriceTable(currency="USD", models=[cpb.ModelPrice(
        model="m", input_per_million=float("nan"), output_per_million=1.0)])
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                model="hf", tasks=["arc_easy"], price_table=bad)), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(
        "spec.price_table.models[0].input_per_million: must be a finite price >= 0")
