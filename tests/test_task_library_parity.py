"""Issue 23's acceptance command on the tiny model: ``--tasks arc_challenge_llama,
mmlu_astronomy_generative --apply_chat_template`` with no ``--include_path`` (both are lm-eval
library tasks, found by name) gives lm-eval 0.4.13's prompts, generations and metrics, sample
for sample. evalfleet runs through its real services (a standing coordinator and an hf worker);
lm-eval runs in-process, reading the same mirror."""

from __future__ import annotations

import json

import grpc
import pytest

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

TASKS = ["arc_challenge_llama", "mmlu_astronomy_generative"]
LIMIT = 3
#: The tiny random model never emits a stop sequence: cap generation on both sides alike.
GEN_KWARGS = "max_gen_toks=32"


def _evalfleet(address: str) -> tuple[dict, list[dict]]:
    spec = cpb.EvaluationSpec(model="hf", tasks=TASKS, limit=LIMIT, log_samples=True,
                              bootstrap_iters=0, batch_size="4", apply_chat_template=True,
                              gen_kwargs=GEN_KWARGS)
    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        evaluation = stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=300)
        events = list(stub.WatchEvaluation(cpb.WatchEvaluationRequest(id=evaluation.id),
                                           timeout=900))
        assert events[-1].state == cpb.EVALUATION_STATE_SUCCEEDED, events[-1]
        results = stub.GetResults(cpb.GetResultsRequest(id=evaluation.id), timeout=30)
        samples = [{**json.loads(r.json), "task": r.task} for r in stub.StreamSamples(
            cpb.StreamSamplesRequest(id=evaluation.id), timeout=60)]
    return json.loads(results.results_json), samples


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
    ours, our_samples = _evalfleet(coordinator.address)
    by_key = {(s["task"], s["doc_id"], s["filter"]): s for s in our_samples}
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
