"""Issue 23's acceptance command on the tiny model: ``--tasks arc_challenge_llama,
mmlu_astronomy_generative --apply_chat_template`` with no ``--include_path`` (both are lm-eval
library tasks, found by name) gives lm-eval 0.4.13's prompts, generations and metrics, sample
for sample. evalfleet runs through its real services (a standing coordinator and an hf worker);
lm-eval runs in-process, reading the same mirror."""

from __future__ import annotations

import pytest
from conftest import run_evaluation

from evalfleet.v1 import coordinator_pb2 as cpb

TASKS = ["arc_challenge_llama", "mmlu_astronomy_generative"]
LIMIT = 3
#: The tiny random model never emits a stop sequence: cap generation on both sides alike.
GEN_KWARGS = "max_gen_toks=32"


@pytest.mark.reference
def test_library_tasks_with_a_chat_template_match_lm_eval(coordinator, lmeval_task_dir,
                                                          tiny_model_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    theirs = simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32", tasks=TASKS,
        limit=LIMIT, batch_size=4, device="cpu", log_samples=True, bootstrap_iters=0,
        apply_chat_template=True, gen_kwargs=GEN_KWARGS,
        task_manager=TaskManager(include_path=str(lmeval_task_dir), include_defaults=False))
    final, _, ours, our_samples = run_evaluation(coordinator.address, cpb.EvaluationSpec(
        model="hf", tasks=TASKS, limit=LIMIT, log_samples=True, bootstrap_iters=0,
        batch_size="4", apply_chat_template=True, gen_kwargs=GEN_KWARGS))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    by_key = {(task, s["doc_id"], s["filter"]): s
              for task, records in our_samples.items() for s in records}
    for task in TASKS:
        assert len(theirs["samples"][task]) == LIMIT
        for ref in theirs["samples"][task]:
            got = by_key[(task, ref["doc_id"], ref["filter"])]
            prompts = [a["arg_0"] for a in got["arguments"].values()]
            assert prompts == [a[0] for a in ref["arguments"]], (task, ref["doc_id"])
            assert "<|im_start|>" in prompts[0]
            assert got["resps"] == ref["resps"], (task, ref["doc_id"])
            assert got["filtered_resps"] == ref["filtered_resps"], (task, ref["doc_id"])
            for metric in ref["metrics"]:
                assert got[metric] == ref[metric], (task, ref["doc_id"], metric)
        for key, value in theirs["results"][task].items():
            if "," in key and "stderr" not in key:
                assert ours["results"][task][key] == pytest.approx(value, abs=1e-12), key
