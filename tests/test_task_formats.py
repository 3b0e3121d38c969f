"""Task formats: ``--tasks NAME@generate`` / ``@cot`` ask a multiple-choice task generatively.

* the prompt is the task's own question and choices, lettered, in lm-eval 0.5.0.dev1's
  ``generate`` text (test_task_formats_lmeval05.py compares it with 0.5 itself);
* answers are read strictly (0.5's ``first_token``: the whole response is the letter) and
  flexibly ("answer is X", a leading letter, a choice's text); ``unparsed`` counts the rest;
* through the real services, on the hf backend and on ``local-chat-completions`` against the
  OpenAI-compatible stand-in: results are named ``<task>@generate`` and report exact_match
  and unparsed, never acc;
* a chat endpoint refusing a multiple-choice task names the ``@generate`` form and, without
  ``--apply_chat_template``, that flag in the same message.
"""

from __future__ import annotations

import json

import grpc
import pytest
from conftest import openai_test_server, run_evaluation

from evalfleet.server.capabilities import check_request_kinds
from evalfleet.tasks import TaskManager
from evalfleet.tasks.errors import TaskError, TaskNotFoundError
from evalfleet.tasks.formats.answers import INVALID, flexible_answer, strict_answer
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

LETTERS = ["A", "B", "C", "D"]
CHOICES = ["a sunny day", "rain", "Paris", "the moon"]


@pytest.mark.parametrize(("response", "strict", "flexible"), [
    ("A", "A", "A"), (" b. ", "B", "B"), ("(C)", "C", "C"), ("D.", "D", "D"),
    (" C. Paris", INVALID, "C"), ("**B**", "B", "B"), ("B) rain\nbecause", INVALID, "B"),
    ("The best answer is D", INVALID, "D"), ("I think A, but the answer is: C.", INVALID, "C"),
    ("the final answer is Paris.", INVALID, "C"), ("Paris", INVALID, "C"),
    ("A type of weather", INVALID, INVALID), ("no idea", INVALID, INVALID), ("", INVALID, INVALID),
    ("E", INVALID, INVALID), ("The best answer is E", INVALID, INVALID),
    (" [answer_letter] D.", INVALID, "D"),
])
def test_answer_readings(response, strict, flexible):
    assert strict_answer(response, LETTERS) == strict
    assert flexible_answer(response, LETTERS, CHOICES) == flexible


@pytest.fixture(scope="module")
def manager(data_dir):
    return TaskManager(data_dir=data_dir)


def test_formatted_task_prompt_target_and_settings(manager):
    tree = manager.load(["arc_easy", "arc_easy@generate", "kobest_copa@cot"])
    assert tree.roots == ["arc_easy", "arc_easy@generate", "kobest_copa@cot"]
    plain, task = tree.tasks["arc_easy"], tree.tasks["arc_easy@generate"]
    assert plain.output_type == "multiple_choice" and task.output_type == "generate_until"
    doc_id, doc = task.eval_docs(1)[0]
    assert task.doc_to_text(doc) == (
        "Given the following question and 4 candidate answers (A, B, C and D), choose the best "
        "answer.\nQuestion: Question: " + doc["question"] + "\nAnswer:\n" + "\n".join(
            f"{label}. {text}" for label, text in zip("ABCD", doc["choices"]["text"],
                                                      strict=True))
        + '\nYour response should end with "The best answer is [answer_letter]" where the '
        "[answer_letter] is one of A, B, C or D.")
    gold = "ABCD"[doc["choices"]["label"].index(doc["answerKey"])]
    assert task.sample_record_fields(doc_id, doc)["target"] == gold
    (request,) = task.build_requests(limit=1)
    assert request.arguments[0].endswith("or D.\nThe best answer is")
    assert request.arguments[1] == {"temperature": 0.0, "do_sample": False, "max_gen_toks": 256,
                                    "until": ["\n\n"]}
    assert [m.name for m in task.metric_list] == ["exact_match", "unparsed"]
    assert [p.name for p in task.filter_list] == ["none", "flexible-extract"]
    # a task whose question and choices are Python functions (0.5 cannot format it)
    copa = tree.tasks["kobest_copa@cot"]
    _, doc = copa.eval_docs(1)[0]
    text = copa.doc_to_text(doc)
    assert text.startswith("Given the following problem, reason step by step to find the "
                           "final answer.\nProblem: ")
    assert f"\nA. {doc['alternative_1']}\nB. {doc['alternative_2']}\n" in text
    assert text.endswith('"The final answer is [answer]" where [answer] is the response to '
                         "the problem.")


def test_format_errors_are_one_line(manager):
    with pytest.raises(TaskNotFoundError, match=r"unknown task format '@mcq'; the formats are "
                       r"@cot, @generate") as err:
        manager.load(["arc_easy@mcq"])
    assert err.value.suggestions == ["arc_easy@cot", "arc_easy@generate"]
    with pytest.raises(TaskError, match=r"not multiple_choice: @generate turns a multiple-choice"):
        manager.load(["gsm8k@generate"])
    assert manager.load(["kobest@generate"]).roots == ["kobest@generate"]  # a group's format


def _chat_worker(chat_only: bool = True) -> dict[str, ipb.ModelInfo]:
    caps = ipb.Capabilities(generate_until=True, chat_only=chat_only,
                            logprobs_unavailable_reason="chat endpoints return no prompt "
                                                        "logprobs")
    return {"127.0.0.1:1": ipb.ModelInfo(backend="local-chat-completions", model_name="m",
                                         capabilities=caps)}


def test_loglikelihood_refusal_names_the_generate_form():
    from evalfleet.common.errors import FailedPreconditionError

    kinds = {"arc_easy": {"loglikelihood"}, "kobest_copa": {"loglikelihood"},
             "lambada_openai": {"loglikelihood"}}
    mc = {"arc_easy", "kobest_copa"}
    with pytest.raises(FailedPreconditionError) as err:
        check_request_kinds(kinds, _chat_worker(), multiple_choice=mc, apply_chat_template=False)
    message = str(err.value)
    assert "task arc_easy needs loglikelihood requests" in message
    assert ("--tasks arc_easy@generate,kobest_copa@generate --apply_chat_template"
            in message), message
    assert "add --apply_chat_template either way" in message
    with pytest.raises(FailedPreconditionError) as err:
        check_request_kinds(kinds, _chat_worker(), multiple_choice=mc, apply_chat_template=True)
    assert "@generate --apply_chat_template (the" in str(err.value)
    assert "either way" not in str(err.value)
    with pytest.raises(FailedPreconditionError) as err:  # not multiple choice: no such form
        check_request_kinds({"lambada_openai": {"loglikelihood"}}, _chat_worker(),
                            multiple_choice=mc)
    assert "@generate" not in str(err.value)


def _check_formatted_results(results: dict, samples: dict, tasks: list[str], limit: int,
                             chat_messages: bool) -> None:
    for task in tasks:
        metrics = results["results"][task]
        assert not any(k.startswith(("acc", "f1")) for k in metrics), metrics
        for key in ("exact_match,none", "exact_match,flexible-extract", "unparsed,none",
                    "unparsed,flexible-extract"):
            assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
        assert results["higher_is_better"][task]["unparsed"] is False
        by_filter: dict[str, list[dict]] = {}
        for sample in samples[task]:
            by_filter.setdefault(sample["filter"], []).append(sample)
        assert sorted(by_filter) == ["flexible-extract", "none"]
        for name, rows in by_filter.items():
            assert sorted(s["doc_id"] for s in rows) == list(range(limit))
            mean = sum(s["exact_match"] for s in rows) / limit
            assert metrics[f"exact_match,{name}"] == pytest.approx(mean)
            assert metrics[f"unparsed,{name}"] == pytest.approx(
                sum(s["filtered_resps"][0] == INVALID for s in rows) / limit)
            for s in rows:
                assert s["target"] in "ABCD" and len(s["target"]) == 1
                prompt = s["arguments"]["gen_args_0"]["arg_0"]
                if chat_messages:
                    messages = json.loads(prompt)
                    assert messages[-1] == {"role": "assistant",
                                            "content": "The best answer is"}
                    assert "Your response should end with" in messages[-2]["content"]
                else:
                    assert prompt.endswith("<|im_start|>assistant\nThe best answer is"), prompt


TASKS = ["kobest_hellaswag@generate", "arc_easy@generate"]
LIMIT = 3


def test_hf_backend_runs_formatted_tasks(coordinator):
    final, _, results, samples = run_evaluation(coordinator.address, cpb.EvaluationSpec(
        model="hf", tasks=[",".join(TASKS)], limit=LIMIT, apply_chat_template=True,
        log_samples=True, bootstrap_iters=0, gen_kwargs="max_gen_toks=8"))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    _check_formatted_results(results, samples, TASKS, LIMIT, chat_messages=False)


@pytest.fixture(scope="module")
def chat_stand_in(tiny_model_dir):
    srv = openai_test_server(tiny_model_dir)
    srv.model = str(tiny_model_dir)
    yield srv
    srv.stop()


def test_chat_endpoint_runs_formatted_tasks_and_names_them_when_refusing(
        chat_stand_in, worker_and_coordinator):
    from evalfleet.inference.server import load_backend

    args = {"model": "smol", "base_url": f"{chat_stand_in.base_url}/chat/completions"}
    address = worker_and_coordinator(load_backend("local-chat-completions", args), args)
    with grpc.insecure_channel(address) as channel:
        from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=cpb.EvaluationSpec(
                tasks=["kobest_hellaswag,gsm8k"], limit=2)), timeout=120)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details()
    for part in ("task kobest_hellaswag needs loglikelihood",
                 "--tasks kobest_hellaswag@generate --apply_chat_template",
                 "add --apply_chat_template either way"):
        assert part in details, (part, details)
    final, _, results, samples = run_evaluation(address, cpb.EvaluationSpec(
        model="local-chat-completions", tasks=TASKS, limit=LIMIT, apply_chat_template=True,
        log_samples=True, bootstrap_iters=0, gen_kwargs="max_gen_toks=8"))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, (final.error,
                                                           chat_stand_in.log_tail())
    _check_formatted_results(results, samples, TASKS, LIMIT, chat_messages=True)
