"""Usage and cost of a ``batch_api=true`` job: the answers a provider batch computed are counted
per task like online ones, and the price table's batch discount applies.

The provider is test_provider_batch_jobs.py's fake inside a real worker (the tiny hf model
answers each batch), here reporting a provider's usage on every answer.
"""

from __future__ import annotations

import pytest
from conftest import run_evaluation
from test_provider_batch_jobs import FakeProvider, _spec, fleet, hf_backend  # noqa: F401

from evalfleet.inference.backends.token_usage import TokenUsage, with_usage
from evalfleet.v1 import coordinator_pb2 as cpb

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: What the fake provider reports for every request it answers.
PER_REQUEST = TokenUsage(prompt_tokens=100, cached_tokens=40, completion_tokens=2)


class ReportingProvider(FakeProvider):
    """The fake provider, its batch answers carrying :data:`PER_REQUEST` each."""

    async def poll_batch(self, batch_id, requests):
        status = await super().poll_batch(batch_id, requests)
        if status.answers is not None:
            status.answers.results = [with_usage(r, PER_REQUEST)
                                      for r in status.answers.results]
        return status


def test_provider_batch_answers_are_counted_and_priced_at_the_batch_rate(
        fleet, tiny_model_dir):  # noqa: F811 - the imported fixture
    fleet.worker(ReportingProvider(fleet.hf))
    spec = _spec(tiny_model_dir, ["arc_easy", "gsm8k"], batch_api=True, limit=2,
                 gen_kwargs="max_gen_toks=4")
    spec.price_table.CopyFrom(cpb.PriceTable(currency="USD", models=[cpb.ModelPrice(
        model=str(tiny_model_dir), input_per_million=10.0, cached_input_per_million=5.0,
        output_per_million=20.0, batch_discount=0.5)]))
    final, events, results, _ = run_evaluation(fleet.coordinator("usage.db"), spec)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    usage = results["evalfleet_usage"]
    one = (60 * 10.0 + 40 * 5.0 + 2 * 20.0) / 1e6 * 0.5  # a request at the batch rate
    for task, requests in (("arc_easy", 8), ("gsm8k", 2)):  # arc_easy: 2 docs x 4 choices
        counts = usage["tasks"][task]
        assert (counts["requests"], counts["prompt_tokens"], counts["cached_tokens"],
                counts["completion_tokens"]) == (requests, 100 * requests, 40 * requests,
                                                 2 * requests)
        assert counts["cost"] == pytest.approx(requests * one)
    assert usage["price"]["batch_api"] is True
    assert usage["total"]["cost"] == pytest.approx(10 * one)
    assert events[-1].usage.prompt_tokens == 1000
