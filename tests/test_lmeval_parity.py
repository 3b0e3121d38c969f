"""evalfleet's numbers against lm-eval 0.4.13 itself, on the tiny model and real data.

lm-eval runs in-process (``simple_evaluate`` with ``--model hf`` on the same model directory),
reading the same mirror through the override files of ../shared/tools/lmeval_local.py.
evalfleet runs through its real services (coordinator + worker on loopback).
"""

from __future__ import annotations

import pytest
from conftest import run_evaluation
from parity_values import assert_sample_parity

from evalfleet.v1 import coordinator_pb2 as cpb

TASKS = ["arc_easy", "piqa"]
LIMIT = 20
LL_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def lmeval_samples(lmeval_task_dir, tiny_model_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32", tasks=TASKS,
        limit=LIMIT, batch_size=4, device="cpu", log_samples=True, bootstrap_iters=1000,
        task_manager=TaskManager(include_path=str(lmeval_task_dir)),
    )
    return results


@pytest.fixture(scope="module")
def evalfleet_run(coordinator):
    spec = cpb.EvaluationSpec(model="hf", tasks=TASKS, limit=LIMIT, log_samples=True,
                              bootstrap_iters=1000, batch_size="4")
    final, _, results, samples = run_evaluation(coordinator.address, spec, timeout_s=600)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    return results, samples


@pytest.mark.reference
@pytest.mark.parametrize("task", TASKS)
def test_metrics_identical(lmeval_samples, evalfleet_run, task):
    ours, _ = evalfleet_run
    theirs = lmeval_samples["results"][task]
    for metric in ("acc,none", "acc_norm,none", "acc_stderr,none", "acc_norm_stderr,none"):
        assert ours["results"][task][metric] == pytest.approx(theirs[metric], abs=1e-12), metric
    assert ours["results"][task]["sample_len"] == theirs["sample_len"]


@pytest.mark.reference
@pytest.mark.parametrize("task", TASKS)
def test_per_sample_loglikelihoods_match(lmeval_samples, evalfleet_run, task):
    _, our_samples = evalfleet_run
    ours = {s["doc_id"]: s for s in our_samples[task]}
    theirs = {s["doc_id"]: s for s in lmeval_samples["samples"][task]}
    assert set(ours) == set(theirs) == set(range(LIMIT))
    worst = 0.0
    for doc_id, ref in theirs.items():
        mine = ours[doc_id]
        assert [a for a in mine["arguments"].values()] == [
            {"arg_0": a[0], "arg_1": a[1]} for a in ref["arguments"]]
        ref_lls = [float(r[0][0]) for r in ref["resps"]]
        my_lls = [float(r[0][0]) for r in mine["resps"]]
        worst = max(worst, *(abs(a - b) for a, b in zip(ref_lls, my_lls, strict=True)))
        assert [bool(r[0][1]) for r in ref["resps"]] == [r[0][1] == "True"
                                                          for r in mine["resps"]]
        assert mine["acc"] == ref["acc"] and mine["acc_norm"] == ref["acc_norm"]
        assert_sample_parity(mine, ref)  # metric values, resps and filtered_resps
        assert mine["doc_hash"] == ref["doc_hash"]
        assert mine["prompt_hash"] == ref["prompt_hash"]
        assert mine["target_hash"] == ref["target_hash"]
    assert worst < LL_TOLERANCE
