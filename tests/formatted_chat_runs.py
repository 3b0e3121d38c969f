"""``--tasks kobest_hellaswag@generate,arc_easy@generate --apply_chat_template`` through
``local-chat-completions`` against a real chat server (behind a RecordingProxy), checked
against the hf backend's prompts for the same documents."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_evaluation
from recording_proxy import RecordingProxy
from test_task_formats import _check_formatted_results

from evalfleet.v1 import coordinator_pb2 as cpb

TASKS = ["kobest_hellaswag@generate", "arc_easy@generate"]
LIMIT = 2
MAX_GEN_TOKS = 16


def _spec(model: str) -> cpb.EvaluationSpec:
    return cpb.EvaluationSpec(model=model, tasks=[",".join(TASKS)], limit=LIMIT,
                              apply_chat_template=True, log_samples=True, bootstrap_iters=0,
                              gen_kwargs=f"max_gen_toks={MAX_GEN_TOKS}")


def _prompts(samples: dict[str, list[dict]]) -> dict[tuple[str, int], str]:
    return {(task, s["doc_id"]): s["arguments"]["gen_args_0"]["arg_0"]
            for task, rows in samples.items() for s in rows}


def run_and_check(chat_address: str, proxy: RecordingProxy, hf_address: str,
                  tokenizer_dir: Path, server_log: str = "") -> dict:
    """Run the formatted tasks on the chat worker behind ``proxy`` and check: the results
    (named ``<task>@generate``, exact_match and unparsed under both readings, no acc); the
    messages the server received are the samples' arguments; those messages, rendered by the
    model's chat template as the hf backend renders them, are the hf backend's prompts for the
    same documents. Returns the results."""
    from transformers import AutoTokenizer

    sent_before = len(proxy.bodies("/v1/chat/completions"))
    final, _, results, samples = run_evaluation(chat_address, _spec("local-chat-completions"))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, (final.error, server_log)
    assert sorted(results["results"]) == sorted(TASKS), results["results"]
    _check_formatted_results(results, samples, TASKS, LIMIT, chat_messages=True)

    received = proxy.bodies("/v1/chat/completions")[sent_before:]
    assert len(received) == len(TASKS) * LIMIT, received
    assert all(body["max_tokens"] == MAX_GEN_TOKS for body in received), received
    ours = _prompts(samples)
    sent = sorted(json.dumps(b["messages"]) for b in received)
    logged = sorted(json.dumps(json.loads(p)) for p in ours.values())
    assert sent == logged, ("the server received other messages than the samples record",
                            sent, logged)

    final, _, _, hf_samples = run_evaluation(hf_address, _spec("hf"))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    hf = _prompts(hf_samples)
    assert sorted(hf) == sorted(ours)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for key, prompt in ours.items():
        rendered = tok.apply_chat_template(json.loads(prompt), tokenize=False,
                                           continue_final_message=True)
        assert rendered == hf[key], (key, rendered, hf[key])
    return results
