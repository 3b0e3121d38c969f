"""Run by tests/test_task_formats_lmeval05.py with lm-eval 0.5.0.dev1's interpreter (its own
venv, which cannot import evalfleet): evaluate ``<task>@generate`` tasks through 0.5's own task
loading, format, prompt building and scorer, offline on the data mirror: once with 0.5's own
``hf`` model (the tiny model, float32 on the CPU, greedy), which generates its own responses,
and once per given pass with a model that replays given responses. Prints, per task and pass,
each document's prompt (0.5's chat messages for a replay pass, the string 0.5's hf model
rendered for the ``own`` pass), generation settings, target, response and ``exact_match``, and
the aggregate.

Usage: python lmeval05_formats_reference.py INPUT.json OUTPUT.json
INPUT: {"limit": N, "gen_kwargs": {...}, "model": model folder, "tasks": {name: {"yaml": path
under lm_eval/tasks, "data_files": {split: file}, "unset": [split keys], "drop_metrics": bool}},
"passes": {pass: {task: {doc_id: response}}}}; OUTPUT holds the passes and ``own``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import types

# 0.5.0.dev1 imports `requests` at top level for its API models; this venv lacks it and no
# request is made here
if "requests" not in sys.modules:
    try:
        import requests  # noqa: F401
    except ImportError:
        sys.modules["requests"] = types.ModuleType("requests")

import lm_eval  # noqa: E402
import yaml  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402


class Replay(LM):
    """Answers each generation request with the given response for its task and document."""

    def __init__(self, responses: dict[str, dict[str, str]]) -> None:
        super().__init__()
        self.responses = responses

    def loglikelihood(self, requests):
        raise RuntimeError("a formatted task asks no loglikelihood")

    def loglikelihood_rolling(self, requests):
        raise RuntimeError("a formatted task asks no loglikelihood")

    def generate_until(self, requests):
        return [self.responses[r.task_name.split("@")[0]][str(r.doc_id)] for r in requests]

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        return json.dumps({"messages": chat_history,
                           "add_generation_prompt": add_generation_prompt})

    @property
    def tokenizer_name(self) -> str:
        return "replay"

    def chat_template(self, chat_template=False):
        return "replay"


def _context(model: LM, sample: dict) -> dict | str:
    """The replay model's chat messages, or the prompt string 0.5's hf model rendered."""
    prompt = sample["arguments"][0][0]
    return json.loads(prompt) if isinstance(model, Replay) else prompt


def main(inp: str, out: str) -> None:
    with open(inp) as fh:
        spec = json.load(fh)
    tasks_dir = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    include = tempfile.mkdtemp()
    for name, task in spec["tasks"].items():
        over = {"include": os.path.join(tasks_dir, task["yaml"]), "task": name,
                "dataset_path": "json", "dataset_name": None,
                "dataset_kwargs": {"data_files": task["data_files"]},
                **{key: None for key in task.get("unset", ())}}  # splits the mirror lacks
        if task["drop_metrics"]:  # 0.5 refuses `acc` on a formatted task; evalfleet drops it
            over["metric_list"] = []
        with open(os.path.join(include, f"{name}.yaml"), "w") as fh:
            yaml.safe_dump(over, fh)
    manager = TaskManager(include_path=include, include_defaults=False)
    runs = {name: Replay(responses) for name, responses in spec["passes"].items()}
    runs["own"] = HFLM(pretrained=spec["model"], dtype="float32", device="cpu", batch_size=1)
    result = {}
    for pass_name, model in runs.items():
        res = simple_evaluate(
            model=model, tasks=[f"{n}@generate" for n in spec["tasks"]],
            limit=spec["limit"], gen_kwargs=spec["gen_kwargs"], apply_chat_template=True,
            fewshot_as_multiturn=False,
            task_manager=manager, bootstrap_iters=0, log_samples=True)
        result[pass_name] = {
            name: {"results": res["results"][name],
                   "samples": [{"doc_id": s["doc_id"], "context": _context(model, s),
                                "gen_kwargs": s["arguments"][0][1], "target": s["target"],
                                "resps": s["resps"], "exact_match": s["exact_match"]}
                               for s in res["samples"][name]]}
            for name in spec["tasks"]}
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
