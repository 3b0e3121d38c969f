"""``--apply_chat_template`` (with and without few-shot turns and a system instruction) gives
lm-eval 0.4.13's prompts string for string and its per-sample metrics.

lm-eval runs in-process with ``--model hf`` on the tiny model (SmolLM2's tokenizer and chat
template); evalfleet runs through its real services, where the coordinator builds the prompts and
the worker renders them with the tokenizer's ``apply_chat_template`` (the ApplyChatTemplate RPC).
"""

from __future__ import annotations

import hashlib

import pytest
from conftest import run_evaluation

from evalfleet.v1 import coordinator_pb2 as cpb

#: (name, fewshot_as_multiturn, system_instruction)
SETTINGS = [
    ("multiturn", True, None),
    ("single_turn", False, None),
    ("system", True, "You are a careful assistant. Answer briefly."),
]
TASKS = {"arc_easy": dict(num_fewshot=3, limit=8), "gsm8k": dict(num_fewshot=None, limit=5)}
#: The tiny random model never emits a stop sequence: cap generation on both sides alike.
GEN_KWARGS = "max_gen_toks=32"


def _lmeval(lmeval_task_dir, model_dir, task, multiturn, system):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=[task],
        limit=TASKS[task]["limit"], num_fewshot=TASKS[task]["num_fewshot"], batch_size=4,
        device="cpu", log_samples=True, bootstrap_iters=0, apply_chat_template=True,
        gen_kwargs=GEN_KWARGS,
        fewshot_as_multiturn=multiturn, system_instruction=system,
        task_manager=TaskManager(include_path=str(lmeval_task_dir)))


def _evalfleet(address, task, multiturn, system):
    spec = cpb.EvaluationSpec(model="hf", tasks=[task], limit=TASKS[task]["limit"],
                              log_samples=True, bootstrap_iters=0, batch_size="4",
                              gen_kwargs=GEN_KWARGS,
                              apply_chat_template=True, fewshot_as_multiturn=multiturn,
                              system_instruction=system or "")
    if TASKS[task]["num_fewshot"] is not None:
        spec.num_fewshot = TASKS[task]["num_fewshot"]
    final, _, results, samples = run_evaluation(address, spec)
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    return results, samples[task]


@pytest.mark.reference
@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize(("name", "multiturn", "system"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_chat_template_prompts_and_metrics_match_lm_eval(
        coordinator, lmeval_task_dir, tiny_model_dir, task, name, multiturn, system):
    theirs = _lmeval(lmeval_task_dir, tiny_model_dir, task, multiturn, system)
    ours, our_samples = _evalfleet(coordinator.address, task, multiturn, system)

    their_samples = {s["doc_id"]: s for s in theirs["samples"][task]}
    mine = {s["doc_id"]: s for s in our_samples if s["filter"] == our_samples[0]["filter"]}
    assert set(mine) == set(their_samples) == set(range(TASKS[task]["limit"]))
    for doc_id, ref in their_samples.items():
        prompts = [a["arg_0"] for a in mine[doc_id]["arguments"].values()]
        assert prompts == [a[0] for a in ref["arguments"]], f"doc {doc_id}"
        assert "<|im_start|>" in prompts[0]  # really rendered with SmolLM2's template
        if system:
            assert system in prompts[0]
    # per-sample metrics under every filter, and the aggregates
    by_key = {(s["doc_id"], s["filter"]): s for s in our_samples}
    for ref in theirs["samples"][task]:
        got = by_key[(ref["doc_id"], ref["filter"])]
        for metric in ref["metrics"]:
            assert got[metric] == ref[metric], (ref["doc_id"], ref["filter"], metric)
    for key, value in theirs["results"][task].items():
        if "," in key and "stderr" not in key:
            assert ours["results"][task][key] == pytest.approx(value, abs=1e-12), key

    from lm_eval.models.huggingface import HFLM

    template = HFLM(pretrained=str(tiny_model_dir), device="cpu").chat_template(True)
    assert ours["chat_template"] == template
    assert ours["chat_template_sha"] == hashlib.sha256(template.encode()).hexdigest()
    assert ours["fewshot_as_multiturn"] is multiturn
    assert ours["system_instruction"] == system
