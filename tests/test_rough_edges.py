"""Rough edges a newcomer hit, each fixed: ``tasks show`` with a typo, ``tasks list`` columns, a
task file error under --include_path over gRPC, and failures after all the compute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import grpc
import pytest
from conftest import DATA_DIR, REPO_ROOT

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

ENV = {**os.environ, "EVALFLEET_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1"}

ARC_TASK = """\
task: {name}
dataset_path: allenai/ai2_arc
dataset_name: ARC-Easy
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
process_results: !function {module}.process
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalfleet.client.cli", *args],
                          capture_output=True, text=True, env=ENV, timeout=300, cwd=REPO_ROOT)


def test_tasks_show_typo_is_one_line_with_did_you_mean():
    result = _cli("tasks", "show", "arc_esay")
    assert result.returncode == 2
    # lm-eval's task library (tasks/library.py) has close names too: arc_easy comes first
    assert result.stderr.startswith("error: unknown task 'arc_esay'; did you mean arc_easy, ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_tasks_list_fills_data_and_output_type(capsys, monkeypatch):
    from evalfleet.client.cli import _tasks, build_parser

    monkeypatch.setenv("COLUMNS", "200")
    args = build_parser().parse_args(["tasks", "list", "--data_dir", str(DATA_DIR)])
    assert _tasks(args) == 0
    rows = {line.split("\t")[0]: line.split("\t")[1:]  # not a terminal: tab-separated
            for line in capsys.readouterr().out.splitlines()}
    assert rows["arc_easy"][0] == "task" and rows["arc_easy"][2:] == ["yes", "multiple_choice"]
    assert rows["gsm8k"][2:] == ["yes", "generate_until"]
    assert rows["mmlu"][0] == "group" and rows["mmlu"][2:] == ["", ""]


def _create(stub, spec: cpb.EvaluationSpec) -> cpb.Evaluation:
    return stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=120)


def _finish(stub, evaluation: cpb.Evaluation) -> tuple[cpb.Evaluation, list[str]]:
    messages = [e.message for e in stub.WatchEvaluation(
        cpb.WatchEvaluationRequest(id=evaluation.id), timeout=600)]
    return stub.GetEvaluation(cpb.GetEvaluationRequest(id=evaluation.id), timeout=10), messages


@pytest.fixture()
def stub(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        yield cpb_grpc.EvaluationServiceStub(channel)


def test_include_path_task_file_error_is_invalid_argument_naming_the_file(stub, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("include: nowhere.yaml\ntask: broken_task\n")
    spec = cpb.EvaluationSpec(model="hf", tasks=["broken_task"], limit=1,
                              include_paths=[str(tmp_path)])
    with pytest.raises(grpc.RpcError) as info:
        _create(stub, spec)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(bad) in info.value.details() and "nowhere.yaml" in info.value.details()


def test_scoring_failure_names_the_task_and_the_answers_are_kept(stub, tmp_path):
    """A task whose process_results returns text for a mean: the job fails with what failed
    and where, and the same job fixed reuses every answer (nothing is computed again)."""
    (tmp_path / "bad_metric.py").write_text(textwrap.dedent("""\
        def process(doc, results):
            return {"acc": "not a number"}
    """))
    (tmp_path / "good_metric.py").write_text(textwrap.dedent("""\
        def process(doc, results):
            best = max(range(len(results)), key=lambda i: results[i][0])
            return {"acc": float(best == doc["choices"]["label"].index(doc["answerKey"]))}
    """))
    (tmp_path / "bad.yaml").write_text(ARC_TASK.format(name="rough_bad", module="bad_metric"))
    (tmp_path / "good.yaml").write_text(ARC_TASK.format(name="rough_good",
                                                        module="good_metric"))
    spec = cpb.EvaluationSpec(model="hf", tasks=["rough_bad"], limit=3,
                              include_paths=[str(tmp_path)], bootstrap_iters=0)
    failed, _ = _finish(stub, _create(stub, spec))
    assert failed.state == cpb.EVALUATION_STATE_FAILED
    assert "internal error" not in failed.error
    assert failed.error.startswith(f"scoring task 'rough_bad' ({tmp_path / 'bad.yaml'}) failed "
                                   "after all 12 model answers were computed")
    assert "the answers are kept" in failed.error.lower()

    spec.tasks[:] = ["rough_good"]
    done, messages = _finish(stub, _create(stub, spec))
    assert done.state == cpb.EVALUATION_STATE_SUCCEEDED, done.error
    assert "12 answers from the store, 0 to compute" in messages


def test_results_table_failure_keeps_the_results(stub, monkeypatch):
    from evalfleet.server import results as results_mod

    def broken_table(*_args, **_kwargs):
        raise ValueError("a metric the table cannot show")

    monkeypatch.setattr(results_mod, "make_table", broken_table)
    spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=2, bootstrap_iters=0)
    done, _ = _finish(stub, _create(stub, spec))
    assert done.state == cpb.EVALUATION_STATE_SUCCEEDED, done.error
    results = stub.GetResults(cpb.GetResultsRequest(id=done.id), timeout=30)
    assert results.table.startswith("(the results table could not be built: ValueError")
    doc = json.loads(results.results_json)
    assert doc["results"]["arc_easy"]["sample_len"] == 2 and "acc,none" in \
        doc["results"]["arc_easy"]
    assert results.tasks[0].task == "arc_easy"



def test_results_header_never_prints_secret_model_args():
    from evalfleet.server.results import header_line

    config = {"model": "local-completions", "gen_kwargs": {}, "limit": None, "num_fewshot": 0,
              "batch_size": 1, "model_args": {"model": "smol", "api_key": "sk-live-123",
                                              "hf_token": "hf_abc", "tokenizer": "gpt2",
                                              "add_bos_token": True}}
    header = header_line(config)
    assert header == ("local-completions ({'model': 'smol', 'api_key': '***', 'hf_token': "
                      "'***', 'tokenizer': 'gpt2', 'add_bos_token': True}), gen_kwargs: ({}), "
                      "limit: None, num_fewshot: 0, batch_size: 1")
    config["model_args"] = "pretrained=x,password=hunter2,token=t"  # a file's string form
    assert "(pretrained=x,password=***,token=***)" in header_line(config)
