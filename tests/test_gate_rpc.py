"""The coordinator's release gate (``EvaluateGate``) on stored evaluations agrees with ``evalfleet
gate`` on the files ``evalfleet results ID --output_path`` writes: two real jobs of the tiny model
through the session coordinator, judged both ways. Hostile requests get a client status."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import grpc
import pytest
from conftest import run_evaluation
from test_fuzz_rpc import FORBIDDEN, STRINGS, _fuzz

from evalfleet.client.cli import main
from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

METHOD = "/evalfleet.v1.EvaluationService/EvaluateGate"
POLICY = """\
tasks:
  arc_easy:
    required: true
    metrics:
      acc: {floor: 0.9, max_regression: 0.05}
      acc_norm: {max_regression: 0.3}
  piqa:
    metrics:
      acc: {max_regression: 0.05}
"""


@pytest.fixture(scope="module")
def two_evaluations(coordinator, tmp_path_factory) -> tuple[str, str, Path, Path]:
    """Two succeeded arc_easy jobs (20 documents, samples logged; the candidate with a system
    instruction), and the files ``evalfleet results ID --output_path`` wrote for each."""
    ids = []
    for extra in ({}, {"system_instruction": "Answer the question."}):
        spec = cpb.EvaluationSpec(model="hf", tasks=["arc_easy"], limit=20, log_samples=True,
                                  bootstrap_iters=0, batch_size="8", **extra)
        final, _, results, _ = run_evaluation(coordinator.address, spec, timeout_s=300)
        assert results is not None, final
        ids.append(final.id)
    out = tmp_path_factory.mktemp("gate_runs")
    folders = []
    for name, evaluation_id in zip(("a", "b"), ids, strict=True):
        code = main(["results", evaluation_id, "--coordinator", coordinator.address,
                     "--output_path", str(out / name)])
        assert code == 0
        folders.append(out / name)
    return ids[0], ids[1], folders[0], folders[1]


def test_the_coordinators_gate_agrees_with_the_cli(coordinator, two_evaluations, tmp_path,
                                                   capsys):
    baseline_id, candidate_id, folder_a, folder_b = two_evaluations
    policy = tmp_path / "gate.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    capsys.readouterr()
    local_code = main(["gate", "--policy", str(policy), str(folder_a), str(folder_b), "--json"])
    local = json.loads(capsys.readouterr().out)
    remote_code = main(["gate", "--coordinator", coordinator.address, "--policy", str(policy),
                        baseline_id, candidate_id, "--json"])
    remote = json.loads(capsys.readouterr().out)
    assert (local_code, local["verdict"]) == (remote_code, remote["verdict"]) == (1, "NO-GO")
    assert (remote["baseline"], remote["candidate"]) == (baseline_id, candidate_id)
    for key in ("verdict", "exit_code", "reasons", "counts", "policy", "checks"):
        assert local[key] == remote[key], key
    kinds = {(c["kind"], c["metric"], c["status"]) for c in remote["checks"]}
    assert ("floor", "acc", "FAIL") in kinds and ("required", None, "PASS") in kinds
    assert {c["test"] for c in remote["checks"] if c["kind"] == "regression"} == \
        {"McNemar exact"}  # paired per document in the store, as in the files
    assert [c["status"] for c in remote["checks"] if c["task"] == "piqa"] == ["SKIPPED"]

    with grpc.insecure_channel(coordinator.address) as channel:
        answer = cpb_grpc.EvaluationServiceStub(channel).EvaluateGate(cpb.EvaluateGateRequest(
            baseline_id=baseline_id, candidate_id=candidate_id, policy_yaml=POLICY), timeout=60)
    assert answer.verdict == cpb.GATE_VERDICT_NO_GO
    assert answer.policy_sha256 == hashlib.sha256(policy.read_bytes()).hexdigest()
    assert list(answer.reasons) == remote["reasons"]
    assert [(c.task, c.metric, c.filter, c.kind, c.status, c.message) for c in answer.checks] \
        == [(c["task"], c["metric"] or "", c["filter"] or "", c["kind"], c["status"],
             c["message"]) for c in remote["checks"]]
    assert json.loads(answer.verdict_json)["policy"]["source"] == "<request>"


def test_gate_rpc_errors_are_one_line_client_statuses(coordinator, two_evaluations, tmp_path,
                                                      capsys, caplog):
    baseline_id, _, _, _ = two_evaluations
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.EvaluateGate(cpb.EvaluateGateRequest(
                baseline_id=baseline_id, candidate_id="nope", policy_yaml=POLICY), timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing.value.details() == "candidate_id: evaluation 'nope' not found"
        with pytest.raises(grpc.RpcError) as bad:
            stub.EvaluateGate(cpb.EvaluateGateRequest(
                baseline_id=baseline_id, candidate_id=baseline_id,
                policy_yaml="tasks:\n  arc_easy: {required: maybe}\n"), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tasks.arc_easy.required: must be true or false" in bad.value.details()
        # hostile ids with a valid policy reach the store lookups; hostile policies the parser
        with caplog.at_level(logging.DEBUG):
            for text in STRINGS:
                try:
                    stub.EvaluateGate(cpb.EvaluateGateRequest(
                        baseline_id=text, candidate_id=baseline_id, policy_yaml=POLICY),
                        timeout=30)
                except grpc.RpcError as exc:
                    assert exc.code() not in FORBIDDEN, (text[:40], exc.details())
            codes, failures = _fuzz(coordinator.address,
                                    {METHOD: (cpb.EvaluateGateRequest, False)},
                                    random.Random(20261206))
    assert not failures, failures
    assert sum(codes.values()) >= 14 and "rpc_internal_error" not in caplog.text
    # the CLI says the coordinator's refusal in one line, exit 2
    policy = tmp_path / "gate.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    code = main(["gate", "--coordinator", coordinator.address, "--policy", str(policy),
                 baseline_id, "nope"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: candidate_id: evaluation 'nope' not found\n"
