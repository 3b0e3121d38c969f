"""Reasoning models: the thinking kept apart from the answer, an answer that ended inside its
thinking scored as no answer (lm-eval #3382), and per task the responses that hit the length
limit, those that ended inside their thinking and the tokens used, in the results'
``evalfleet_generation`` section.

* the readers, on every backend's response shape (OpenAI-style chat with ``<think>`` in the
  content or a separate ``reasoning_content``, Anthropic thinking blocks, a vLLM output);
* through a real coordinator and ``local-chat-completions`` against the OpenAI-compatible
  stand-in in ``--reasoning`` mode (scripted answers, some cut by the length limit): counts,
  usage, samples and ``unparsed`` are exactly the script's;
* through the hf backend, the tiny model with a chat template whose generation prompt opens a
  think block and ``think_end_token=</think>``: the counts are what the generations contain
  (recomputed here with transformers' own greedy generation).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import openai_test_server, run_evaluation

from evalfleet.inference.backends.anthropic_chat import anthropic_answer
from evalfleet.inference.backends.reasoning import GeneratedText, api_generation, split_thinking
from evalfleet.inference.backends.vllm import vllm_answer
from evalfleet.server.generation_stats import SECTION, GenerationStats, generation_section
from evalfleet.tasks.formats.answers import INVALID
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

THINK = "</think>"


# -- readers ------------------------------------------------------------------------------------
def test_split_thinking_keeps_the_answer_after_the_last_end_token():
    assert split_thinking("a</think>b</think>  The answer is C", THINK) == \
        ("The answer is C", "a</think>b", False)
    # the thinking never ended: no answer (lm-eval would answer with the whole thinking)
    assert split_thinking("<think>so the answer is C because", THINK) == \
        ("", "<think>so the answer is C because", True)
    assert split_thinking("plain", None) == ("plain", "", False)
    # a server that parsed the thinking sends only the answer, without the end token
    assert split_thinking("C", THINK, separate_reasoning="hmm") == ("C", "hmm", False)
    assert split_thinking("", THINK, separate_reasoning="hmm") == ("", "hmm", True)


def test_chat_response_with_reasoning_content_and_usage():
    usage = {"prompt_tokens": 7, "completion_tokens": 30,
             "completion_tokens_details": {"reasoning_tokens": 25}}
    done = api_generation("The best answer is B", THINK, separate_reasoning="Let me see.",
                          finish_reason="stop", usage=usage)
    assert done == "The best answer is B" and done.reasoning == "Let me see."
    assert not done.unfinished_thinking and not done.hit_length_limit
    assert (done.prompt_tokens, done.completion_tokens, done.reasoning_tokens) == (7, 30, 25)
    cut = api_generation(None, None, separate_reasoning="Let me see more", finish_reason="length",
                         usage=None)
    assert cut == "" and cut.unfinished_thinking and cut.hit_length_limit
    assert cut.reasoning == "Let me see more"
    plain = api_generation(None, None, separate_reasoning=None, finish_reason="stop", usage=None,
                           none_answer="NONE")
    assert plain == "NONE" and not plain.unfinished_thinking
    fields = GeneratedText("x", reasoning="r", hit_length_limit=True).generation_fields()
    assert ipb.Generation(text="x", **fields).reasoning == "r"


def test_anthropic_thinking_blocks_are_the_reasoning():
    data = {"content": [{"type": "thinking", "thinking": "Consider A."},
                        {"type": "text", "text": "The best answer is A"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 11, "output_tokens": 40}}
    answer = anthropic_answer(data, None)
    assert answer == "The best answer is A" and answer.reasoning == "Consider A."
    assert (answer.prompt_tokens, answer.completion_tokens) == (11, 40)
    cut = anthropic_answer({"content": [{"type": "thinking", "thinking": "Consider"}],
                            "stop_reason": "max_tokens"}, None)
    assert cut == "" and cut.unfinished_thinking and cut.hit_length_limit


class _CountingTokenizer:
    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        return list(range(len(text.split())))


def test_vllm_output_is_split_counted_and_cut_at_stops():
    def output(text: str, finish: str) -> SimpleNamespace:
        return SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[SimpleNamespace(
            text=text, finish_reason=finish, token_ids=list(range(9)))])

    done = vllm_answer(output("one two</think> 42\n\nQuestion: more", "stop"), ["Question:"],
                       THINK, _CountingTokenizer())
    assert done == "42\n\n" and done.reasoning == "one two"
    assert (done.prompt_tokens, done.completion_tokens, done.reasoning_tokens) == (3, 9, 2)
    assert not done.hit_length_limit and not done.unfinished_thinking
    cut = vllm_answer(output("one two three", "length"), [], THINK, _CountingTokenizer())
    assert cut == "" and cut.unfinished_thinking and cut.hit_length_limit
    assert cut.reasoning_tokens == 9


def test_generation_section_sums_tasks():
    a, b = GenerationStats(), GenerationStats()
    a.add(ipb.Generation(hit_length_limit=True, unfinished_thinking=True, prompt_tokens=3,
                         completion_tokens=5, reasoning_tokens=5))
    a.add(ipb.Generation(prompt_tokens=1))
    b.add(ipb.Generation(hit_length_limit=True, completion_tokens=2))
    section = generation_section([("t1", a), ("t2", b), ("mc", None)])
    assert section["tasks"]["t1"] == {"responses": 2, "hit_length_limit": 1,
                                      "unfinished_thinking": 1,
                                      "usage": {"prompt_tokens": 4, "completion_tokens": 5,
                                                "reasoning_tokens": 5}}
    assert sorted(section["tasks"]) == ["t1", "t2"]
    assert section["total"]["responses"] == 3 and section["total"]["hit_length_limit"] == 2
    assert section["total"]["usage"]["completion_tokens"] == 7
    assert generation_section([("mc", None)]) is None


def test_hf_rows_split_at_a_string_or_token_id_and_count_the_length_limit(tiny_model_dir):
    from transformers import AutoTokenizer

    from evalfleet.inference.backends.hf_generate import generated_answer
    from evalfleet.inference.backends.hf_text import HFTokenizer

    tok = HFTokenizer(AutoTokenizer.from_pretrained(tiny_model_dir), add_bos_token=None,
                      prefix_token_id=None)
    eos = tok.eot_token_id

    def enc(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    def answer(toks, think, max_gen=64):
        return generated_answer(tok, toks, until=["Question:"], max_gen_toks=max_gen,
                                think_end_token=think, pad_id=None, prompt_tokens=3)

    done = answer(enc("thinking</think> 42\n\nQuestion: x") + [eos], THINK)
    assert done == "42\n\n" and done.reasoning == "thinking"
    assert not done.hit_length_limit and not done.unfinished_thinking
    assert done.completion_tokens == len(enc("thinking</think> 42\n\nQuestion: x")) + 1
    assert done.reasoning_tokens == len(enc("thinking</think>"))
    # cut by max_gen_toks inside the thinking: no answer, though the thinking names one
    thinking = enc("so the answer is 42 because")
    cut = answer(thinking, THINK, max_gen=len(thinking))
    assert cut == "" and cut.unfinished_thinking and cut.hit_length_limit
    assert cut.reasoning == "so the answer is 42 because" and cut.reasoning_tokens == len(thinking)
    # an integer think_end_token is found among the tokens (lm-eval's rule)
    marker = enc(" Answer")[0]
    by_id = answer(enc("hmm") + [marker] + enc(" 7") + [eos], marker)
    assert by_id == "7" and by_id.reasoning == "hmm" and not by_id.unfinished_thinking
    # without think_end_token nothing changes but the counts
    plain = answer(thinking, None, max_gen=len(thinking))
    assert plain == "so the answer is 42 because" and plain.hit_length_limit
    assert plain.reasoning == "" and plain.reasoning_tokens == 0


def test_enable_thinking_and_the_cache_key_on_chat_backends(monkeypatch):
    from evalfleet.common.generation import GenerationParams
    from evalfleet.inference.backends.anthropic_chat import AnthropicChatBackend
    from evalfleet.inference.backends.base import BackendArgumentError, GenerationRequest
    from evalfleet.inference.backends.openai_chat import LocalChatBackend, OpenAIChatBackend
    from evalfleet.inference.backends.openai_completions import LocalCompletionsBackend

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    base = {"model": "m", "base_url": "http://127.0.0.1:1/v1/chat/completions"}
    request = GenerationRequest([{"role": "user", "content": "2+2?"}],
                                GenerationParams.from_gen_kwargs({"until": ["\n"]}))
    off = LocalChatBackend.from_model_args({**base, "enable_thinking": "false"})
    assert off.payload(request.context, request)["chat_template_kwargs"] == \
        {"enable_thinking": False}
    plain = LocalChatBackend.from_model_args(base)
    assert "chat_template_kwargs" not in plain.payload(request.context, request)
    # answers made with other reasoning settings are never reused from the cache
    split = LocalChatBackend.from_model_args({**base, "think_end_token": THINK})
    keys = {b.model_info().fingerprint for b in (off, plain, split)}
    assert len(keys) == 3
    assert LocalChatBackend.from_model_args(base).model_info().fingerprint == \
        plain.model_info().fingerprint
    for cls in (OpenAIChatBackend, AnthropicChatBackend):
        with pytest.raises(BackendArgumentError, match="model_args.enable_thinking"):
            cls.from_model_args({"model": "m", "enable_thinking": True})
    with pytest.raises(BackendArgumentError, match="model_args.enable_thinking"):
        LocalChatBackend.from_model_args({**base, "enable_thinking": "maybe"})
    completions = LocalCompletionsBackend.from_model_args(
        {"model": "m", "base_url": "http://127.0.0.1:1/v1/completions", "tokenizer_backend": None,
         "enable_thinking": True})
    assert completions.args.enable_thinking is True


# -- a scripted reasoning server through a real coordinator ------------------------------------
#: (case, expected answer, expected reasoning, hit length limit, unfinished thinking)
CASES = [
    ({"content": "<think>A fits.</think>\n\nThe best answer is A", "finish_reason": "stop",
      "usage": {"prompt_tokens": 50, "completion_tokens": 12}},
     "The best answer is A", "<think>A fits.", False, False),
    ({"content": "<think>It could be B or, the best answer is C", "finish_reason": "length",
      "usage": {"prompt_tokens": 51, "completion_tokens": 8}},
     "", "<think>It could be B or, the best answer is C", True, True),
    ({"content": "The best answer is B", "reasoning_content": "B is right.",
      "finish_reason": "stop",
      "usage": {"prompt_tokens": 52, "completion_tokens": 20,
                "completion_tokens_details": {"reasoning_tokens": 15}}},
     "The best answer is B", "B is right.", False, False),
    ({"content": None, "reasoning_content": "Surely the answer is D, but",
      "finish_reason": "length",
      "usage": {"prompt_tokens": 53, "completion_tokens": 8,
                "completion_tokens_details": {"reasoning_tokens": 8}}},
     "", "Surely the answer is D, but", True, True),
    ({"content": "<think>ok</think>The best answer is", "finish_reason": "length",
      "usage": {"prompt_tokens": 54, "completion_tokens": 8}},
     "The best answer is", "<think>ok", True, False),
]
CHAT_TASK = "arc_easy@generate"
CHAT_LIMIT = 20


def _case_of(messages: list[dict]) -> int:
    """The stand-in's choice (tests/servers/openai_compat.py ``reasoning_case``)."""
    last_user = [m["content"] for m in messages if m["role"] == "user"][-1]
    return int(hashlib.sha256(last_user.encode()).hexdigest(), 16) % len(CASES)


@pytest.fixture(scope="module")
def reasoning_stand_in(tiny_model_dir, tmp_path_factory):
    script = tmp_path_factory.mktemp("reasoning") / "script.json"
    script.write_text(json.dumps([case for case, *_ in CASES]))
    srv = openai_test_server(tiny_model_dir, "--reasoning", str(script))
    yield srv
    srv.stop()


def test_reasoning_chat_server_counts_and_no_answer(reasoning_stand_in, worker_and_coordinator):
    from evalfleet.inference.server import load_backend

    args = {"model": "smol", "base_url": f"{reasoning_stand_in.base_url}/chat/completions",
            "think_end_token": THINK}
    address = worker_and_coordinator(load_backend("local-chat-completions", args), args)
    final, _, results, samples = run_evaluation(address, cpb.EvaluationSpec(
        model="local-chat-completions", tasks=[CHAT_TASK], limit=CHAT_LIMIT,
        apply_chat_template=True, log_samples=True, bootstrap_iters=0))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, (final.error,
                                                           reasoning_stand_in.log_tail())
    rows = [s for s in samples[CHAT_TASK] if s["filter"] == "none"]
    assert sorted(s["doc_id"] for s in rows) == list(range(CHAT_LIMIT))
    expected = GenerationStats()
    seen = set()
    for sample in rows:
        index = _case_of(json.loads(sample["arguments"]["gen_args_0"]["arg_0"]))
        seen.add(index)
        case, answer, reasoning, hit, unfinished = CASES[index]
        assert sample["resps"] == [[answer]], (index, sample["resps"])
        assert sample["reasoning"] == [[reasoning]]
        if unfinished:  # no answer reaches the extractor: never read out of the thinking
            assert sample["filtered_resps"] == [INVALID]
        usage = case["usage"]
        expected.add(ipb.Generation(
            hit_length_limit=hit, unfinished_thinking=unfinished,
            prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
            reasoning_tokens=usage.get("completion_tokens_details", {}).get("reasoning_tokens",
                                                                            0)))
    assert seen == set(range(len(CASES))), seen  # the documents exercise every case
    section = results[SECTION]
    assert section["tasks"][CHAT_TASK] == expected.as_dict()
    assert section["total"] == expected.as_dict()
    assert expected.unfinished_thinking >= 1 and expected.hit_length_limit >= 2
    metrics = results["results"][CHAT_TASK]
    assert metrics["unparsed,none"] == pytest.approx(
        sum(s["filtered_resps"][0] == INVALID for s in rows) / CHAT_LIMIT)
    assert SECTION not in results["results"][CHAT_TASK]  # lm-eval's schema untouched


# -- hf: a chat template that opens a think block ----------------------------------------------
THINKING_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}")
HF_TASK = "gsm8k"
HF_LIMIT = 4
MAX_GEN = 8


@pytest.fixture(scope="module")
def thinking_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a chat template whose generation prompt opens a think block."""
    out = tmp_path_factory.mktemp("thinking-model")
    for item in Path(tiny_model_dir).iterdir():
        if item.name != "chat_template.jinja":
            (out / item.name).symlink_to(item.resolve())
    (out / "chat_template.jinja").write_text(THINKING_TEMPLATE)
    return out


def test_hf_think_block_counts_match_the_generations(thinking_model_dir, worker_and_coordinator):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalfleet.inference.server import load_backend

    args = {"pretrained": str(thinking_model_dir), "dtype": "float32", "device": "cpu",
            "think_end_token": THINK}
    address = worker_and_coordinator(load_backend("hf", args, batch_size=1), args)
    final, _, results, samples = run_evaluation(address, cpb.EvaluationSpec(
        model="hf", tasks=[HF_TASK], limit=HF_LIMIT, num_fewshot=0, apply_chat_template=True,
        log_samples=True, bootstrap_iters=0, gen_kwargs=f"max_gen_toks={MAX_GEN}"))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    tok = AutoTokenizer.from_pretrained(thinking_model_dir)
    model = AutoModelForCausalLM.from_pretrained(thinking_model_dir, dtype=torch.float32)
    rows = [s for s in samples[HF_TASK] if s["filter"] == samples[HF_TASK][0]["filter"]]
    assert len(rows) == HF_LIMIT
    hit = unfinished = prompt_tokens = completion_tokens = 0
    for sample in rows:
        prompt = sample["arguments"]["gen_args_0"]["arg_0"]
        assert prompt.endswith("<|im_start|>assistant\n<think>\n"), prompt[-60:]
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=MAX_GEN, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in out:
            out = out[:out.index(tok.eos_token_id) + 1]
        raw = tok.decode(out, skip_special_tokens=False)
        stopped = tok.eos_token_id in out or "Question:" in raw
        hit += len(out) == MAX_GEN and not stopped
        prompt_tokens += ids.shape[1]
        completion_tokens += len(out)
        text = tok.decode(out, skip_special_tokens=True)
        if THINK in text:
            assert sample["resps"][0][0] == text.split(THINK)[-1].lstrip().split("Question:")[0]
        else:
            unfinished += 1
            assert sample["resps"] == [[""]]  # no answer, whatever the thinking says
            assert sample["reasoning"] == [[text]]
    section = results[SECTION]["tasks"][HF_TASK]
    assert section["responses"] == HF_LIMIT
    assert section["unfinished_thinking"] == unfinished
    assert section["hit_length_limit"] == hit
    assert section["usage"]["prompt_tokens"] == prompt_tokens
    assert section["usage"]["completion_tokens"] == completion_tokens
    assert unfinished >= HF_LIMIT - 1  # the random model rarely closes its thinking
