"""Generation parity that can fail: the real SmolLM2-135M-Instruct on lm-eval's boolq-seq2seq
(a generate_until task it partly solves), evalfleet's hf worker through the real services
against lm-eval 0.4.13's ``--model hf``: the same generations, per-sample exact_match values
and score, which lies strictly between 0 and 1 (one answer right, one wrong). Two documents,
eight tokens each: about 20 s on two cores."""

from __future__ import annotations

import pytest
from conftest import run_evaluation
from parity_values import assert_samples_parity, lmeval_task_manager

from evalfleet.v1 import coordinator_pb2 as cpb

pytestmark = [pytest.mark.slow, pytest.mark.reference]

TASK = "boolq-seq2seq"
#: validation documents 5 (the model answers " The answer is:", wrong) and 7 (" yes", right)
DOCS = [5, 7]
GEN_KWARGS = "max_gen_toks=8"


def test_boolq_generations_and_scores_equal_lm_evals(real_model_dir, worker_and_coordinator,
                                                     lmeval_task_dir, tmp_path):
    from lm_eval import simple_evaluate

    from evalfleet.inference.server import load_backend

    args = {"pretrained": str(real_model_dir), "dtype": "float32", "device": "cpu"}
    address = worker_and_coordinator(load_backend("hf", args, batch_size=1), args)
    final, _, ours, samples = run_evaluation(address, cpb.EvaluationSpec(
        model="hf", tasks=[TASK], samples={TASK: cpb.DocIndices(indices=DOCS)},
        log_samples=True, bootstrap_iters=0, gen_kwargs=GEN_KWARGS))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    theirs = simple_evaluate(
        model="hf", model_args=f"pretrained={real_model_dir},dtype=float32", tasks=[TASK],
        samples={TASK: DOCS}, batch_size=1, device="cpu", bootstrap_iters=0,
        gen_kwargs=GEN_KWARGS, log_samples=True,
        task_manager=lmeval_task_manager(lmeval_task_dir, tmp_path / "lm_tasks", [TASK]))
    # --samples documents are written under their index in the split (lm-eval's doc_id_true)
    assert_samples_parity(samples[TASK], theirs["samples"][TASK])
    key = "exact_match,none"
    assert ours["results"][TASK][key] == theirs["results"][TASK][key] == 0.5
    assert sorted(s["exact_match"] for s in samples[TASK]) == [0.0, 1.0]
    assert sorted(s["doc_id"] for s in samples[TASK]) == DOCS
