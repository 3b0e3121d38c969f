"""humaneval and mbpp: refused without consent; with it, generations and pass@1 equal lm-eval
0.4.13's ``--model hf`` through the real services: on SmolLM2-135M (limit 5 each, greedy) at
acceptance size (``make test-acceptance``), on the tiny model with capped generation in the
default suite."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from conftest import ACCEPTANCE, run_evaluation

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

TASKS = ["humaneval", "mbpp"]
LIMIT = 5 if ACCEPTANCE else 1
#: The default suite caps generation on both sides alike; acceptance runs generate as the
#: tasks say (up to 1,024 tokens for humaneval).
GEN_KWARGS = None if ACCEPTANCE else "max_gen_toks=160"
BATCH = 1  # lm-eval runs a batch until every row stops: batches cost more here
CODE_EVAL = Path(__file__).resolve().parent / "lmeval_code_eval"


def _create(address: str, spec: cpb.EvaluationSpec):
    with grpc.insecure_channel(address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        return stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=300)


def test_code_task_refused_by_a_coordinator_without_consent(coordinator):
    spec = cpb.EvaluationSpec(model="hf", tasks=["humaneval"], limit=1,
                              confirm_run_unsafe_code=True)
    with pytest.raises(grpc.RpcError) as err:
        _create(coordinator.address, spec)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "humaneval" in err.value.details()
    assert "coordinator was not started with --confirm_run_unsafe_code" in err.value.details()


def test_code_task_refused_when_the_job_does_not_confirm(background_loop, tiny_worker,
                                                         data_dir):
    from evalfleet.server.service import start_coordinator

    server, _ = background_loop.run(start_coordinator(
        workers=[tiny_worker.address], data_dir=data_dir, confirm_run_unsafe_code=True))
    try:
        with pytest.raises(grpc.RpcError) as err:
            _create(server.address, cpb.EvaluationSpec(model="hf", tasks=["mbpp"], limit=1))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "the job did not pass --confirm_run_unsafe_code" in err.value.details()
    finally:
        background_loop.run(server.stop(0.5))


def test_cli_refuses_without_the_flag(capsys, data_dir, tiny_model_dir):
    from evalfleet.client.cli import main

    code = main(["eval", "--model", "hf", "--model_args", f"pretrained={tiny_model_dir}",
                 "--tasks", "humaneval", "--limit", "1", "--data_dir", str(data_dir),
                 "--no_progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unsafe_code" in err and "--confirm_run_unsafe_code" in err


@pytest.fixture(scope="module")
def code_model_dir(request):
    """SmolLM2-135M at acceptance size; the tiny model (its random text never stops, so the
    capped generation is the whole budget) in the default suite."""
    return request.getfixturevalue("real_model_dir" if ACCEPTANCE else "tiny_model_dir")


@pytest.fixture(scope="module")
def lmeval_code_results(lmeval_task_dir, code_model_dir, tmp_path_factory):
    """lm-eval itself; its task utils load HF code_eval, offline a ./code_eval folder."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    workdir = tmp_path_factory.mktemp("code_eval_cwd")
    (workdir / "code_eval").symlink_to(CODE_EVAL)
    previous = os.getcwd()
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    os.chdir(workdir)
    try:
        return simple_evaluate(
            model="hf", model_args=f"pretrained={code_model_dir},dtype=float32", tasks=TASKS,
            limit=LIMIT, batch_size=BATCH, device="cpu", bootstrap_iters=0, log_samples=True,
            confirm_run_unsafe_code=True, gen_kwargs=GEN_KWARGS,
            task_manager=TaskManager(include_path=str(lmeval_task_dir)))
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def evalfleet_code_results(background_loop, code_model_dir, data_dir):
    from evalfleet.inference.server import load_backend, start_worker
    from evalfleet.server.service import start_coordinator

    model_args = {"pretrained": str(code_model_dir), "dtype": "float32", "device": "cpu"}
    backend = load_backend("hf", model_args, batch_size=BATCH)
    worker = background_loop.run(start_worker(backend, model_args=model_args))
    server, _ = background_loop.run(start_coordinator(
        workers=[worker.address], data_dir=data_dir, confirm_run_unsafe_code=True))
    try:
        spec = cpb.EvaluationSpec(model="hf", tasks=TASKS, limit=LIMIT, bootstrap_iters=0,
                                  log_samples=True, batch_size=str(BATCH),
                                  confirm_run_unsafe_code=True, gen_kwargs=GEN_KWARGS or "")
        final, _, results, samples = run_evaluation(server.address, spec, timeout_s=1800)
        assert final.state == cpb.EVALUATION_STATE_SUCCEEDED, final.error
        return results, samples
    finally:
        background_loop.run(server.stop(0.5))
        background_loop.run(worker.stop(0.5))


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("task", TASKS)
def test_generations_and_pass_at_1_match_lm_eval(lmeval_code_results, evalfleet_code_results,
                                                 task):
    ours, our_samples = evalfleet_code_results
    theirs = lmeval_code_results
    keys = {k for k in theirs["results"][task] if "," in k}
    assert keys == {k for k in ours["results"][task] if "," in k}
    for key in keys:
        assert ours["results"][task][key] == theirs["results"][task][key], key
    ref = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
    mine = sorted(our_samples[task], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in mine] == [s["doc_id"] for s in ref] == list(range(LIMIT))
    for m, r in zip(mine, ref, strict=True):
        assert m["arguments"]["gen_args_0"]["arg_0"] == r["arguments"][0][0]  # the prompt
        assert m["resps"] == r["resps"]  # the generations
        assert m["filtered_resps"] == r["filtered_resps"]
        assert {k: m[k] for k in r["metrics"]} == {k: r[k] for k in r["metrics"]}
    print(task, ours["results"][task])


def test_pass_at_k_over_repeats_through_the_evaluator(tmp_path):
    """`repeats: 3` samples per problem, a create_test filter and pass@1/pass@2, as lm-eval's
    humaneval_64 computes them (unbiased estimator per problem, then the mean)."""
    from scoring_harness import write_task

    from evalfleet.common.ids import request_id
    from evalfleet.server.evaluator import TaskScorer, aggregate_task
    from evalfleet.tasks import TaskManager
    from evalfleet.v1 import inference_pb2 as pb

    rows = [{"prompt": "def f(a, b):  # add\n", "test": "assert f(2, 3) == 5"},
            {"prompt": "def f(a, b):  # multiply\n", "test": "assert f(2, 3) == 6"}]
    yaml_text = """\
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{test}}"
unsafe_code: true
repeats: 3
metric_list:
  - metric: pass_at_k
    aggregation: mean
    higher_is_better: true
    k: [1, 2]
filter_list:
  - name: create_test
    filter:
      - function: custom
        filter_fn: !function utils.build_predictions
"""
    utils = ("def build_predictions(resps, docs):\n"
             "    return [[d['prompt'] + r for r in rs] for rs, d in zip(resps, docs)]\n")
    write_task(tmp_path, "t_code", yaml_text, rows, utils=utils)
    task = TaskManager(include_paths=[tmp_path], include_builtin=False).load(
        ["t_code"]).tasks["t_code"]
    requests = task.build_requests()
    ids = [request_id(r.request_type, r.arguments) for r in requests]
    add, mul, bad = "    return a + b", "    return a * b", "    return 0"
    samples = [[add, bad, add], [bad, bad, mul]]
    answers = {f"{rid}#{i}": pb.Generation(text=text).SerializeToString()
               for rid, texts in zip(ids, samples, strict=True) for i, text in enumerate(texts)}
    scorer = TaskScorer(task, task.eval_docs(), requests, ids, answers, allow_code=True)
    scores = scorer.score(log_samples=True)
    aggregate_task(scores, 0)
    assert scores.items[("pass@1", "create_test")] == pytest.approx([2 / 3, 1 / 3])
    assert scores.items[("pass@2", "create_test")] == pytest.approx([1.0, 2 / 3])
    assert scores.aggregates["pass@1,create_test"] == pytest.approx(0.5)
    assert scores.aggregates["pass@2,create_test"] == pytest.approx(5 / 6)
    assert scores.samples[0]["resps"] == [samples[0]]  # requests x repeats
    assert scores.higher_is_better["pass@2"] is True
    with pytest.raises(Exception, match="confirm_run_unsafe_code"):
        TaskScorer(task, task.eval_docs(), requests, ids, answers).score(log_samples=False)
