"""Client input that reached INTERNAL (or UNKNOWN) with a traceback is refused at
CreateEvaluation with INVALID_ARGUMENT naming the field, in one line: deeply nested JSON
arguments, an infinite limit, more shots than the few-shot pool holds, out-of-range generation
arguments (which used to reach the workers, answer INTERNAL there and mark them DOWN), and
request bytes that are no message at all."""

from __future__ import annotations

import logging

import grpc
import pytest

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import coordinator_pb2_grpc as cpb_grpc

NESTED = '{"a": ' * 5000 + "1" + "}" * 5000


def _spec(**fields) -> cpb.EvaluationSpec:
    return cpb.EvaluationSpec(**{"model": "hf", "tasks": ["arc_easy"], "limit": 2, **fields})


CASES = [
    ("model_args nested 5000 deep", _spec(model_args=NESTED), "spec.model_args"),
    ("metadata nested 5000 deep", _spec(metadata=NESTED), "spec.metadata"),
    ("limit +inf", _spec(limit=float("inf")), "spec.limit"),
    ("num_fewshot above the pool", _spec(num_fewshot=100_000), "num_fewshot 100000"),
    ("max_gen_toks 1e12", _spec(tasks=["gsm8k"], gen_kwargs="max_gen_toks=1e12"),
     "spec.gen_kwargs.max_gen_toks"),
    ("max_gen_toks -1", _spec(tasks=["gsm8k"], gen_kwargs="max_gen_toks=-1"),
     "spec.gen_kwargs.max_gen_toks"),
    ("temperature -5", _spec(tasks=["gsm8k"], gen_kwargs="temperature=-5,do_sample=true"),
     "spec.gen_kwargs.temperature"),
    ("top_p 2", _spec(tasks=["gsm8k"], gen_kwargs="top_p=2"), "spec.gen_kwargs.top_p"),
]


@pytest.mark.parametrize(("case", "spec", "named"), CASES, ids=[c[0] for c in CASES])
def test_bad_spec_is_invalid_argument_naming_the_field(coordinator, case, spec, named, caplog):
    with grpc.insecure_channel(coordinator.address) as channel, \
            caplog.at_level(logging.INFO):
        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert named in info.value.details()
    assert "\n" not in info.value.details()
    assert "Traceback" not in caplog.text


def test_a_tasks_generation_kwargs_out_of_range_are_refused_naming_the_task(
        coordinator, tmp_path):
    (tmp_path / "badgen.yaml").write_text(
        "include: " + _builtin("gsm8k") + "\ntask: badgen\n"
        "generation_kwargs:\n  until: ['Question:']\n  max_gen_toks: -1\n")
    spec = cpb.EvaluationSpec(model="hf", tasks=["badgen"], limit=1,
                              include_paths=[str(tmp_path)])
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = cpb_grpc.EvaluationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateEvaluation(cpb.CreateEvaluationRequest(spec=spec), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("task badgen: gen_kwargs.max_gen_toks: must be")


@pytest.mark.parametrize("method", ["/evalfleet.v1.EvaluationService/CreateEvaluation",
                                    "/evalfleet.v1.EvaluationService/WatchEvaluation"])
def test_corrupt_request_bytes_are_invalid_argument_without_a_traceback(
        coordinator, method, caplog):
    """Before: UNKNOWN, and gRPC logged a full traceback per call (a log flood)."""
    with grpc.insecure_channel(coordinator.address) as channel, \
            caplog.at_level(logging.DEBUG):
        call = (channel.unary_stream if "Watch" in method else channel.unary_unary)(method)
        with pytest.raises(grpc.RpcError) as info:
            result = call(b"\xff\xff\xff\xff\x0f", timeout=30)
            list(result) if "Watch" in method else None
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "not a valid message" in info.value.details()
    assert "Traceback" not in caplog.text


def _builtin(task: str) -> str:
    from evalfleet.tasks import TaskManager

    return str(TaskManager().load([task]).tasks[task].cfg.source)
