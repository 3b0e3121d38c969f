"""Task engine behaviour: groups, tags, docs, gold indices, filters, listing."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from evalfleet.tasks import Request, TaskManager, render_task_listing, show_task
from evalfleet.tasks.filters import FILTERS, FilterPipeline


@pytest.fixture(scope="module")
def manager(data_dir) -> TaskManager:
    return TaskManager(data_dir=data_dir)


def test_mmlu_group_tree(manager):
    tree = manager.load(["mmlu"])
    assert tree.roots == ["mmlu"]
    assert len(tree.tasks) == 57
    assert list(tree.groups) == [
        "mmlu", "mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities",
    ]  # fmt: skip
    top = tree.groups["mmlu"]
    assert top.children == ["mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"]
    assert top.version == "2"
    agg = top.aggregate_metric_list[0]
    assert (agg.metric, agg.aggregation, agg.weight_by_size, agg.filter_list) == (
        "acc", "mean", True, None,
    )  # fmt: skip
    assert tree.groups["mmlu_social_sciences"].alias == "social sciences"
    stem = tree.groups["mmlu_stem"].children
    assert len(stem) == 19 and stem == sorted(stem) and "mmlu_anatomy" in stem
    assert len(tree.leaves_of("mmlu")) == 57
    task = tree.tasks["mmlu_anatomy"]
    assert task.alias == "anatomy" and task.version == 1.0
    assert [m.name for m in task.metric_list] == ["acc"]


def test_mmlu_first_n_shots(manager):
    task = manager.load(["mmlu_anatomy"]).tasks["mmlu_anatomy"]
    dev = task.fewshot_pool()
    reqs = task.build_requests(limit=1, num_fewshot=2)
    ctx = reqs[0].arguments[0]
    assert ctx.startswith(
        "The following are multiple choice questions (with answers) about anatomy."
    )
    assert dev[0]["question"].strip() in ctx and dev[1]["question"].strip() in ctx
    assert dev[2]["question"].strip() not in ctx
    assert [r.arguments[1] for r in reqs] == [" A", " B", " C", " D"]


def test_tag_expands_sorted(manager):
    tree = manager.load(["ai2_arc"])
    assert list(tree.tasks) == ["arc_challenge", "arc_easy"]
    assert tree.roots == ["arc_challenge", "arc_easy"]


def test_listing(manager):
    rows = {r["name"]: r for r in render_task_listing(manager)}
    assert rows["arc_easy"]["kind"] == "task" and rows["arc_easy"]["in_mirror"] is True
    assert rows["mmlu"]["kind"] == "group"
    assert rows["ai2_arc"]["kind"] == "tag" and rows["ai2_arc"]["members"] == [
        "arc_challenge", "arc_easy",
    ]  # fmt: skip
    builtins = "hellaswag winogrande boolq lambada_openai truthfulqa_mc1 truthfulqa_mc2 wikitext"
    for name in builtins.split() + ["gsm8k", "kobest_hellaswag", "kobest_copa"]:
        assert rows[name]["kind"] == "task"


def test_show_task(manager):
    text = show_task(manager, "arc_easy")
    assert "task arc_easy" in text and "Question:" in text and "request 3" in text


def test_limit_fraction_and_doc_ids(manager):
    task = manager.load(["arc_challenge"]).tasks["arc_challenge"]
    n = len(task.all_eval_docs())
    docs = task.eval_docs(0.01)
    assert len(docs) == math.ceil(n * 0.01)
    assert [d for d, _ in docs] == list(range(len(docs)))
    assert len(task.eval_docs(3)) == 3


def test_gold_semantics(manager):
    tree = manager.load(["arc_easy", "winogrande", "truthfulqa_mc2", "kobest_copa"])
    arc = tree.tasks["arc_easy"]
    _, doc = arc.eval_docs(1)[0]
    assert arc.doc_gold(doc) == doc["choices"]["label"].index(doc["answerKey"])
    wino = tree.tasks["winogrande"]
    _, doc = wino.eval_docs(1)[0]
    assert wino.doc_gold(doc) == int(doc["answer"]) - 1
    assert wino.multiple_input == 2
    tqa = tree.tasks["truthfulqa_mc2"]
    _, doc = tqa.eval_docs(1)[0]
    assert tqa.doc_gold(doc) == 0
    assert tqa.process_results_fn is not None
    res = tqa.process_results_fn(doc, [(-1.0, False)] * len(doc["mc2_targets"]["choices"]))
    expected = sum(doc["mc2_targets"]["labels"]) / len(doc["mc2_targets"]["labels"])
    assert res["acc"] == pytest.approx(expected)
    copa = tree.tasks["kobest_copa"]
    _, doc = copa.eval_docs(1)[0]
    assert copa.doc_gold(doc) == doc["label"]  # str target -> index in choices
    assert copa.doc_gold({**doc, "label": 0, "alternative_1": "zzz-not-a-choice"}) == 0


def test_gold_invalid_is_minus_100(tmp_path, data_dir):
    (tmp_path / "t.yaml").write_text(
        "task: t\ndataset_path: allenai/ai2_arc\ndataset_name: ARC-Easy\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: question\n"
        "doc_to_target: 7\ndoc_to_choice: ['a', 'b']\n"
    )
    task = TaskManager(include_paths=[tmp_path], data_dir=data_dir).load(["t"]).tasks["t"]
    _, doc = task.eval_docs(1)[0]
    assert task.doc_gold(doc) == -100


def test_generate_until_requests_and_gen_kwargs(manager):
    task = manager.load(["gsm8k"]).tasks["gsm8k"]
    reqs = task.build_requests(limit=2, gen_kwargs={"max_gen_toks": 32, "temperature": 0})
    assert [r.request_type for r in reqs] == ["generate_until"] * 2
    ctx, kwargs = reqs[0].arguments
    assert kwargs == {
        "until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False,
        "temperature": 0, "max_gen_toks": 32,
    }  # fmt: skip
    assert ctx.count("Question:") == 6 and task.effective_num_fewshot == 5
    assert reqs[0].arguments[1] is not reqs[1].arguments[1]


def test_gsm8k_filters(manager):
    task = manager.load(["gsm8k"]).tasks["gsm8k"]
    assert [p.name for p in task.filter_list] == ["strict-match", "flexible-extract"]
    out = task.apply_filters([["so #### 1,234."], ["the answer is $12 or 7"], ["nothing"]])
    assert out["strict-match"] == ["1,234.", "[invalid]", "[invalid]"]
    assert out["flexible-extract"] == ["1,234.", "7", "[invalid]"]
    ex = [m for m in task.metric_list if m.name == "exact_match"][0]
    assert ex.kwargs["ignore_case"] is True and "(?s).*#### " in ex.kwargs["regexes_to_ignore"]


def test_default_filter_is_take_first(manager):
    task = manager.load(["arc_easy"]).tasks["arc_easy"]
    assert task.filter_list == [FilterPipeline("none", [("take_first", {})])]
    assert task.apply_filters([[(-1.0, True)], [(-2.0, False)]]) == {
        "none": [(-1.0, True), (-2.0, False)]
    }


def test_filter_registry():
    for name in ("take_first", "take_first_k", "regex", "majority_vote", "remove_whitespace",
                 "lowercase", "uppercase", "map", "multi_choice_regex", "custom"):  # fmt: skip
        assert name in FILTERS
    pipe = FilterPipeline("v", [("lowercase", {}), ("remove_whitespace", {}),
                                ("majority_vote", {}), ("take_first", {})])  # fmt: skip
    assert pipe.apply([[" A", "a ", "B"]]) == ["a"]
    mapped = FilterPipeline("m", [("map", {"mapping_dict": {"x": 1}, "default_value": 0})])
    assert mapped.apply([["x", "y"]]) == [[1, 0]]
    k = FilterPipeline("k", [("take_first_k", {"k": 2})])
    assert k.apply([["a", "b", "c"]]) == [["a", "b"]]
    mc = FilterPipeline("mc", [("multi_choice_regex", {"regex_pattern": r"(\([A-D]\))"})])
    docs = [{"choices": ["red", "blue"]}]
    assert mc.apply([["I think blue."]], docs) == [["(B)"]]


def test_loglikelihood_and_rolling_requests(manager):
    tree = manager.load(["lambada_openai", "wikitext"])
    lam = tree.tasks["lambada_openai"].build_requests(limit=1)
    ctx, cont = lam[0].arguments
    assert lam[0].request_type == "loglikelihood" and cont.startswith(" ") and " " not in cont[1:]
    wiki = tree.tasks["wikitext"].build_requests(limit=1)
    assert wiki[0].request_type == "loglikelihood_rolling" and len(wiki[0].arguments) == 1


def test_mutual_info_repeats_and_inline_group(tmp_path, data_dir):
    (tmp_path / "mi.yaml").write_text(
        "include: " + str(Path(__file__).parent.parent / "tasks/builtin/arc/arc_easy.yaml") + "\n"
        "task: arc_mi\nrepeats: 3\nmetric_list:\n  - metric: acc_mutual_info\n"
    )
    (tmp_path / "grp.yaml").write_text(
        "group: g\ntask:\n  - arc_mi\n  - task: piqa\n    task_alias: PIQA\n"
        "  - group: inner\n    task: [boolq]\n"
        "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: false\n"
    )
    manager = TaskManager(include_paths=[tmp_path], data_dir=data_dir)
    tree = manager.load(["g"])
    assert list(tree.tasks) == ["arc_mi", "piqa", "boolq"]
    assert tree.groups["g"].children == ["arc_mi", "piqa", "g::inner"]
    assert tree.groups["g::inner"].children == ["boolq"]
    assert tree.tasks["piqa"].alias == "PIQA"
    assert tree.groups["g"].aggregate_metric_list[0].weight_by_size is False
    reqs = tree.tasks["arc_mi"].build_requests(limit=1)
    n = len(reqs) // 2
    assert [r.arguments[0] for r in reqs[n:]] == [""] * n
    assert [r.idx for r in reqs] == list(range(2 * n))
    assert all(isinstance(r, Request) and r.repeats == 3 for r in reqs)


def test_json_dataset_with_relative_data_files(tmp_path, data_dir):
    rows = [{"q": "one", "a": "1"}, {"q": "two", "a": "2"}]
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "mine.yaml").write_text(
        "task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: mine.jsonl\n"
        'test_split: test\noutput_type: generate_until\ndoc_to_text: "Q: {{q}}\\nA:"\n'
        "doc_to_target: a\n"
    )
    task = TaskManager(include_paths=[tmp_path], data_dir=data_dir).load(["mine"]).tasks["mine"]
    reqs = task.build_requests()
    assert [r.arguments[0] for r in reqs] == ["Q: one\nA:", "Q: two\nA:"]
    assert reqs[0].arguments[1]["until"] == ["\n\n"]  # lm-eval's default gen kwargs
    rec = task.sample_record_fields(0, task.eval_docs()[0][1])
    assert rec["target"] == "1"
    assert (
        rec["doc_hash"]
        == hashlib.sha256(json.dumps(rows[0], indent=2, ensure_ascii=False).encode()).hexdigest()
    )


def test_system_instruction_and_description(manager):
    task = manager.load(["mmlu_anatomy"]).tasks["mmlu_anatomy"]
    ctx = task.build_requests(limit=1, system_instruction="Be brief.")[0].arguments[0]
    assert ctx.startswith("Be brief.\n\nThe following are")
    arc = manager.load(["arc_easy"]).tasks["arc_easy"]
    ctx = arc.build_requests(limit=1, system_instruction="Be concise.")[0].arguments[0]
    assert ctx.startswith("Be concise.Question:")  # lm-eval's observed quirk


def test_chat_template_seam(manager):
    task = manager.load(["arc_easy"]).tasks["arc_easy"]
    with pytest.raises(NotImplementedError):
        task.build_requests(limit=1, apply_chat_template=True)

    def template(messages, add_generation_prompt=True):
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|gen"

    reqs = task.build_requests(limit=1, apply_chat_template=True, chat_template=template)
    assert reqs[0].arguments[0].startswith("user:Question:") and reqs[0].arguments[1][0] != " "


def test_config_view_shows_function_source(manager):
    cfg = manager.load(["winogrande"]).tasks["winogrande"].config
    assert "def doc_to_text" in cfg["doc_to_text"]
    assert cfg["metadata"]["version"] == 1.0


def test_filters_match_lm_eval(manager):
    lm_filters = pytest.importorskip("lm_eval.filters")
    from lm_eval.api.instance import Instance

    task = manager.load(["gsm8k"]).tasks["gsm8k"]
    outputs = ["so #### 1,234.", "$5 and 6.5 then -3", "#### -12\n#### 4", "", "none"]
    ours = task.apply_filters([[o] for o in outputs])
    for pipe in task.filter_list:
        insts = [Instance("generate_until", {}, ("", {}), 0) for _ in outputs]
        for inst, out in zip(insts, outputs, strict=True):
            inst.resps = [out]
        lm_filters.build_filter_ensemble(pipe.name, [[f, k] for f, k in pipe.filters]).apply(insts)
        assert [i.filtered_resps[pipe.name] for i in insts] == ours[pipe.name]
