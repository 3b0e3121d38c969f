"""Every output type against lm-eval 0.4.13 on the tiny model: loglikelihood (lambada),
loglikelihood_rolling (wikitext), generate_until with filters (gsm8k), a custom
process_results (truthfulqa_mc2) and multiple-input (winogrande).

Both sides read the same mirror; evalfleet runs through its real services.
"""

from __future__ import annotations

import math

import pytest
from conftest import run_evaluation
from parity_values import assert_sample_parity

from evalfleet.v1 import coordinator_pb2 as cpb

TASKS = ["lambada_openai", "wikitext", "gsm8k", "truthfulqa_mc2", "winogrande"]
LIMIT = 3
GEN_KWARGS = "max_gen_toks=12"


@pytest.fixture(scope="module")
def lmeval_results(lmeval_task_dir, tiny_model_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32", tasks=TASKS,
        limit=LIMIT, batch_size=4, device="cpu", bootstrap_iters=0, gen_kwargs=GEN_KWARGS,
        task_manager=TaskManager(include_path=str(lmeval_task_dir)), log_samples=True)


@pytest.fixture(scope="module")
def evalfleet_results(coordinator):
    spec = cpb.EvaluationSpec(model="hf", tasks=TASKS, limit=LIMIT, bootstrap_iters=0,
                              gen_kwargs=GEN_KWARGS, log_samples=True)
    final, _, results, samples = run_evaluation(coordinator.address, spec)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    return results, samples


@pytest.mark.reference
@pytest.mark.parametrize("task", TASKS)
def test_task_metrics_match_lm_eval(lmeval_results, evalfleet_results, task):
    ours = evalfleet_results[0]["results"][task]
    theirs = lmeval_results["results"][task]
    metric_keys = {k for k in theirs if "," in k}
    assert metric_keys == {k for k in ours if "," in k}
    for key in metric_keys:
        expected, got = theirs[key], ours[key]
        if isinstance(expected, str):
            assert got == expected, key
        elif "perplexity" in key or "bits_per_byte" in key:
            assert got == pytest.approx(expected, rel=1e-4), key
        else:
            assert got == pytest.approx(expected, abs=1e-9), key
        assert not (isinstance(got, float) and math.isnan(got))


@pytest.mark.reference
@pytest.mark.parametrize("task", TASKS)
def test_task_samples_match_lm_eval(lmeval_results, evalfleet_results, task):
    theirs = sorted(lmeval_results["samples"][task], key=lambda s: (s["doc_id"], s["filter"]))
    ours = sorted(evalfleet_results[1][task], key=lambda s: (s["doc_id"], s["filter"]))
    assert [(s["doc_id"], s["filter"]) for s in ours] == [
        (s["doc_id"], s["filter"]) for s in theirs]
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine["prompt_hash"] == ref["prompt_hash"]
        assert mine["target"] == str(ref["target"])
        # each metric's per-sample value (sample["acc"], sample["word_perplexity"] ...), the
        # responses and the filtered responses: loglikelihoods within float32 noise
        assert_sample_parity(mine, ref)
        if task == "gsm8k":
            assert mine["resps"] == ref["resps"]
            assert mine["filtered_resps"] == ref["filtered_resps"]
