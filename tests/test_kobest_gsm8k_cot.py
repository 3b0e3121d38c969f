"""KoBEST (all five tasks and the kobest group) and gsm8k_cot against lm-eval 0.4.13."""

from __future__ import annotations

import pytest
from conftest import ACCEPTANCE, run_evaluation

from evalfleet.tasks import TaskManager
from evalfleet.v1 import coordinator_pb2 as cpb

KOBEST = ["kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic"]
LIMIT = 50 if ACCEPTANCE else 8


@pytest.fixture(scope="module")
def lmeval_kobest(lmeval_task_dir, tiny_model_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager as LmTaskManager

    return simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32", tasks=["kobest"],
        limit=LIMIT, batch_size=8, device="cpu", bootstrap_iters=0,
        task_manager=LmTaskManager(include_path=str(lmeval_task_dir)))


@pytest.fixture(scope="module")
def evalfleet_kobest(coordinator):
    spec = cpb.EvaluationSpec(model="hf", tasks=["kobest"], limit=LIMIT, bootstrap_iters=0,
                              batch_size="8")
    final, _, results, _ = run_evaluation(coordinator.address, spec)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    return results


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", [*KOBEST, "kobest"])
def test_kobest_matches_lm_eval(lmeval_kobest, evalfleet_kobest, name):
    theirs, ours = lmeval_kobest["results"][name], evalfleet_kobest["results"][name]
    keys = {k for k in theirs if "," in k}
    assert keys and keys == {k for k in ours if "," in k}
    for key in keys:
        if isinstance(theirs[key], str):
            assert ours[key] == theirs[key], key
        else:
            assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key
    assert ours["sample_len"] == theirs["sample_len"]
    assert evalfleet_kobest["group_subtasks"]["kobest"] == KOBEST


@pytest.mark.reference
def test_gsm8k_cot_requests_match_lm_eval(lmeval_task_dir, data_dir):
    """8 fixed shots (first_n), 'Q: ... A:' prompts, stops and the two filters' config."""
    from lm_eval.tasks import TaskManager as LmTaskManager

    ref = LmTaskManager(include_path=str(lmeval_task_dir)).load(["gsm8k_cot"])["tasks"][
        "gsm8k_cot"]
    ref.set_fewshot_seed(seed=1234)
    ref.build_all_requests(limit=3)
    task = TaskManager(data_dir=data_dir).load(["gsm8k_cot"]).tasks["gsm8k_cot"]
    ours = task.build_requests(limit=3)
    assert [r.arguments for r in ours] == [i.args for i in ref.instances]
    assert ours[0].arguments[0].count("The answer is") == 8
    assert [f.name for f in task.filter_list] == ["strict-match", "flexible-extract"]
