"""``<task>@generate`` against lm-eval 0.5.0.dev1 itself, sample for sample.

evalfleet runs ``mmlu_astronomy_continuation@generate`` (a task 0.5 formats as it is: its
metric_list names no ``acc``), ``arc_easy@generate`` and ``kobest_hellaswag@generate`` through
its real services (hf backend, the tiny model, ``--apply_chat_template``). Then 0.5, in its own
venv (.venv-lmeval05, made by `make install`, or $LMEVAL05_PYTHON), loads the same tasks offline
from the mirror and runs them twice: with its own ``hf`` model on the same tiny model (float32
on the CPU, greedy, the same max_gen_toks, the chat template applied), which generates its own
responses, and with a model that replays evalfleet's generations (for arc_easy and
kobest_hellaswag, whose ``acc`` 0.5 refuses on a formatted task, the override empties
metric_list as evalfleet does). Compared per document:

* evalfleet's generations (``resps``) equal those 0.5's hf model generated itself, and the
  prompt string 0.5's hf model was given equals evalfleet's;
* the prompt: 0.5's chat messages rendered by the model's tokenizer as 0.5's hf model renders
  them (``add_generation_prompt`` / ``continue_final_message``) equal evalfleet's prompt string;
* the generation settings and the target;
* ``exact_match`` of the ``none`` reading (0.5's ``first_token`` scorer) for the real
  generations and for crafted ones (the right letter bare, lower-cased, bracketed, in a
  sentence; a wrong one), and the task's aggregate.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_evaluation

from evalfleet.v1 import coordinator_pb2 as cpb

LMEVAL05 = Path(os.environ.get("LMEVAL05_PYTHON",
                            REPO_ROOT / ".venv-lmeval05" / "bin" / "python"))
REFERENCE = Path(__file__).resolve().parent / "lmeval05_formats_reference.py"
LIMIT = 3
MAX_GEN_TOKS = 8  # both sides: the tiny model rarely stops early (256 tokens take minutes)
TASKS = {
    "mmlu_astronomy_continuation": {
        "yaml": "mmlu/continuation/mmlu_astronomy.yaml", "drop_metrics": False,
        "data_files": {"test": "cais/mmlu/astronomy/test.jsonl",
                       "dev": "cais/mmlu/astronomy/dev.jsonl"}},
    "arc_easy": {"yaml": "arc/arc_easy.yaml", "drop_metrics": True,
                 "unset": ["training_split", "validation_split"],
                 "data_files": {"test": "allenai/ai2_arc/ARC-Easy/test.jsonl"}},
    "kobest_hellaswag": {"yaml": "kobest/kobest_hellaswag.yaml", "drop_metrics": True,
                         "unset": ["training_split", "validation_split"],
                         "data_files": {"test": "skt/kobest_v1/hellaswag/test.jsonl"}},
}


def _crafted(target: str, doc_id: int) -> str:
    wrong = "A" if target != "A" else "B"
    return [target, wrong, f" {target.lower()}.", f"The best answer is {target}",
            f"({target})\n", f"{target}. because"][doc_id % 6]


@pytest.fixture(scope="module")
def evalfleet_run(coordinator):
    import lm_eval

    continuation = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "continuation"
    final, _, results, samples = run_evaluation(coordinator.address, cpb.EvaluationSpec(
        model="hf", tasks=[f"{n}@generate" for n in TASKS], limit=LIMIT,
        apply_chat_template=True, log_samples=True, bootstrap_iters=0,
        gen_kwargs=f"max_gen_toks={MAX_GEN_TOKS}", include_paths=[str(continuation)]))
    assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
    return results, samples


@pytest.fixture(scope="module")
def reference(evalfleet_run, data_dir, tiny_model_dir, tmp_path_factory):
    if not LMEVAL05.exists():
        pytest.fail(f"lm-eval 0.5.0.dev1's interpreter {LMEVAL05} is missing: run `make "
                    "install` (it makes .venv-lmeval05), or set LMEVAL05_PYTHON")
    _, samples = evalfleet_run
    real, crafted = {}, {}
    for name in TASKS:
        rows = [s for s in samples[f"{name}@generate"] if s["filter"] == "none"]
        real[name] = {str(s["doc_id"]): s["resps"][0][0] for s in rows}
        shift = 2 * list(TASKS).index(name)  # each kind of answer in some task
        crafted[name] = {str(s["doc_id"]): _crafted(s["target"], s["doc_id"] + shift)
                         for s in rows}
    tasks = {n: {**t, "data_files": {k: str(data_dir / v) for k, v in t["data_files"].items()}}
             for n, t in TASKS.items()}
    folder = tmp_path_factory.mktemp("lmeval05")
    (folder / "in.json").write_text(json.dumps({
        "limit": LIMIT, "gen_kwargs": {"max_gen_toks": MAX_GEN_TOKS}, "tasks": tasks,
        "model": str(tiny_model_dir),
        "passes": {"real": real, "crafted": crafted}}))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(LMEVAL05), str(REFERENCE), str(folder / "in.json"),
                           str(folder / "out.json")], capture_output=True, text=True,
                          timeout=300, env=env, cwd=folder)
    if "No module named 'torch'" in proc.stderr:
        pytest.fail(f"lm-eval 0.5.0.dev1's venv ({LMEVAL05}) lacks torch, which its hf model "
                    "needs: run `make install` again (its lmeval05 step adds it)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((folder / "out.json").read_text()), crafted


def _rendered(tokenizer, context: dict) -> str:
    """0.5's HFLM.apply_chat_template on the messages it built."""
    flag = context["add_generation_prompt"]
    return tokenizer.apply_chat_template(context["messages"], tokenize=False,
                                         add_generation_prompt=flag,
                                         continue_final_message=not flag)


@pytest.mark.parametrize("name", list(TASKS))
def test_prompts_settings_and_scores_equal_lmeval05(name, evalfleet_run, reference,
                                                    tiny_model_dir):
    from transformers import AutoTokenizer

    from evalfleet import scoring
    from evalfleet.tasks import TaskManager

    results, samples = evalfleet_run
    theirs, crafted = reference
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ours = {s["doc_id"]: s for s in samples[f"{name}@generate"] if s["filter"] == "none"}
    ref = {s["doc_id"]: s for s in theirs["real"][name]["samples"]}
    assert sorted(ours) == sorted(ref) == list(range(LIMIT))
    for doc_id, mine in ours.items():
        args = mine["arguments"]["gen_args_0"]
        assert args["arg_0"] == _rendered(tokenizer, ref[doc_id]["context"]), doc_id
        assert args["arg_1"] == ref[doc_id]["gen_kwargs"]
        assert mine["target"] == ref[doc_id]["target"]
        assert mine["resps"][0] == ref[doc_id]["resps"][0]
        assert mine["exact_match"] == ref[doc_id]["exact_match"]
    assert results["results"][f"{name}@generate"]["exact_match,none"] == \
        theirs["real"][name]["results"]["exact_match,none"]
    # 0.5's own hf model: the same prompt string, settings and generations as evalfleet's
    own = {s["doc_id"]: s for s in theirs["own"][name]["samples"]}
    assert sorted(own) == sorted(ours)
    for doc_id, mine in ours.items():
        args = mine["arguments"]["gen_args_0"]
        assert args["arg_0"] == own[doc_id]["context"], doc_id
        assert args["arg_1"] == own[doc_id]["gen_kwargs"], doc_id
        assert mine["resps"] == own[doc_id]["resps"], doc_id
        assert mine["exact_match"] == own[doc_id]["exact_match"], doc_id
    assert results["results"][f"{name}@generate"]["exact_match,none"] == \
        theirs["own"][name]["results"]["exact_match,none"]
    # crafted responses through evalfleet's own reading and exact_match, against 0.5's scores
    task = TaskManager(include_paths=[str(Path(__import__("lm_eval").__file__).parent / "tasks"
                                          / "mmlu" / "continuation")]).load(
        [f"{name}@generate"]).tasks[f"{name}@generate"]
    docs = task.eval_docs(LIMIT)
    responses = [[crafted[name][str(i)]] for i, _ in docs]
    read = task.apply_filters(responses, [d for _, d in docs])["none"]
    scores = [float(scoring.exact_match([v], [task.doc_target(d)], ignore_case=True,
                                        ignore_punctuation=True)[0])
              for v, (_, d) in zip(read, docs, strict=True)]
    expected = [float(s["exact_match"]) for s in sorted(theirs["crafted"][name]["samples"],
                                                         key=lambda s: s["doc_id"])]
    assert scores == expected
    assert 0.0 < sum(expected) < LIMIT  # the crafted answers are neither all right nor all wrong
