"""Fuzzing every RPC of a coordinator and a worker with client input (bounded and seeded):
random messages built from the protos' own descriptors, with hostile values (NUL bytes, huge
and deeply nested text, path escapes, NaN and infinities, extreme integers), and raw corrupt
bytes. No answer may be INTERNAL or UNKNOWN and no traceback may be logged: every mistake a
client can make is the client's status, in one line."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from evalfleet.v1 import coordinator_pb2 as cpb
from evalfleet.v1 import inference_pb2 as ipb

SEED = 20261206
#: Random messages per RPC (plus the corrupt-bytes calls): a few hundred calls in all.
CALLS_PER_RPC = 14
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

STRINGS = [
    "", "arc_easy", "gsm8k", "arc_easy,piqa", "mmlu", "hf", "local-completions", "sim",
    "\x00", "\x00:1", "a" * 5000, "../../etc/passwd", "/etc/shadow", "{" * 2000,
    '{"a": ' * 3000 + "1" + "}" * 3000, "k=v,", "=", "pretrained=/nonexistent", "max_gen_toks=-1",
    "temperature=-5,do_sample=true", "max_gen_toks=1e12", "limit=inf", "dns:///nowhere:1",
    "127.0.0.1:1", "[::1]:0", "host:99999", "-1", "nan", "☃" * 50, "\ud7ff\ue000", "%s%n",
    "{{ cycler.__init__.__globals__.os }}", "null", "true", "0" * 40,
]
INTS = [0, 1, -1, 2, 7, 2**31 - 1, -(2**31), 10**6]
UINTS = [0, 1, 2, 2**32 - 1, 10**6]
FLOATS = [0.0, -0.0, 0.5, 1.0, 1e-300, 1e308, -1.0, float("nan"), float("inf"), float("-inf")]

COORDINATOR_RPCS = {
    "/evalfleet.v1.EvaluationService/CreateEvaluation": (cpb.CreateEvaluationRequest, False),
    "/evalfleet.v1.EvaluationService/GetEvaluation": (cpb.GetEvaluationRequest, False),
    "/evalfleet.v1.EvaluationService/WatchEvaluation": (cpb.WatchEvaluationRequest, True),
    "/evalfleet.v1.EvaluationService/CancelEvaluation": (cpb.CancelEvaluationRequest, False),
    "/evalfleet.v1.EvaluationService/ListEvaluations": (cpb.ListEvaluationsRequest, False),
    "/evalfleet.v1.EvaluationService/GetResults": (cpb.GetResultsRequest, False),
    "/evalfleet.v1.EvaluationService/StreamSamples": (cpb.StreamSamplesRequest, True),
    "/evalfleet.v1.EvaluationService/ListTasks": (cpb.ListTasksRequest, False),
    "/evalfleet.v1.EvaluationService/ListWorkers": (cpb.ListWorkersRequest, False),
    "/evalfleet.v1.WorkerRegistryService/RegisterWorker": (cpb.RegisterWorkerRequest, False),
    "/evalfleet.v1.WorkerRegistryService/Heartbeat": (cpb.HeartbeatRequest, False),
    "/evalfleet.v1.WorkerRegistryService/UnregisterWorker": (cpb.UnregisterWorkerRequest,
                                                             False),
}
WORKER_RPCS = {
    "/evalfleet.v1.InferenceService/GetModelInfo": (ipb.GetModelInfoRequest, False),
    "/evalfleet.v1.InferenceService/Loglikelihood": (ipb.LoglikelihoodRequest, False),
    "/evalfleet.v1.InferenceService/LoglikelihoodRolling": (ipb.LoglikelihoodRollingRequest,
                                                            False),
    "/evalfleet.v1.InferenceService/GenerateUntil": (ipb.GenerateUntilRequest, False),
    "/evalfleet.v1.InferenceService/ApplyChatTemplate": (ipb.ApplyChatTemplateRequest, False),
}
CORRUPT = [b"\xff", b"\xff\xff\xff\xff\x0f", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x80",
           bytes(range(256)), b"\x08" + b"\xff" * 11]


def _value(field: FieldDescriptor, rng: random.Random, depth: int) -> object:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _message(field.message_type._concrete_class, rng, depth + 1)
    if kind == FieldDescriptor.TYPE_STRING:
        return rng.choice(STRINGS)
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.choice([b"", b"\x00\xff", rng.randbytes(64)])
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [999])
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice(FLOATS)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return rng.choice(UINTS)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return rng.choice([*UINTS, 2**64 - 1])
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_SFIXED64):
        return rng.choice([*INTS, 2**63 - 1, -(2**63)])
    return rng.choice(INTS)


def _message(cls: type[Message], rng: random.Random, depth: int = 0) -> Message:
    """A message of ``cls`` with each field set (or not) to a hostile value."""
    msg = cls()
    if depth > 3:
        return msg
    for field in cls.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        target = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            for _ in range(rng.randint(1, 3)):
                key = _value(key_field, rng, depth)
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(_value(value_field, rng, depth))
                else:
                    target[key] = _value(value_field, rng, depth)
        elif field.is_repeated:
            for _ in range(rng.randint(1, 3)):
                value = _value(field, rng, depth)
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    target.add().CopyFrom(value)
                else:
                    target.append(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(_value(field, rng, depth))
        else:
            setattr(msg, field.name, _value(field, rng, depth))
    return msg


def _call(channel: grpc.Channel, method: str, streaming: bool, payload: bytes,
          codes: Counter, failures: list[str]) -> None:
    make = channel.unary_stream if streaming else channel.unary_unary
    call: Callable = make(method)
    try:
        result = call(payload, timeout=10)
        if streaming:
            for _ in zip(range(3), result, strict=False):
                pass
            result.cancel()
        codes["OK"] += 1
    except grpc.RpcError as exc:
        code = exc.code()
        codes[code.name] += 1
        if code in FORBIDDEN:
            failures.append(f"{method} -> {code.name}: {exc.details()} ({payload[:80]!r})")
        elif code == grpc.StatusCode.CANCELLED:
            pass  # our own cancel of a stream that was answering


def _fuzz(address: str, rpcs: dict, rng: random.Random) -> tuple[Counter, list[str]]:
    codes: Counter = Counter()
    failures: list[str] = []
    with grpc.insecure_channel(address) as channel:
        for method, (cls, streaming) in rpcs.items():
            for _ in range(CALLS_PER_RPC):
                payload = _message(cls, rng).SerializeToString()
                _call(channel, method, streaming, payload, codes, failures)
            for payload in CORRUPT:
                _call(channel, method, streaming, payload, codes, failures)
    return codes, failures


@pytest.fixture()
def fuzz_coordinator(background_loop, tiny_worker, data_dir, tmp_path):
    """A coordinator of its own (the fuzz registers and cancels things), on the tiny worker."""
    from evalfleet.server.service import start_coordinator
    from evalfleet.server.store import SqliteJobStore

    server, runner = background_loop.run(start_coordinator(
        workers=[tiny_worker.address], store=SqliteJobStore(tmp_path / "fuzz.db"),
        data_dir=data_dir))
    yield server, runner
    for job_id in list(runner.jobs):
        background_loop.run(runner.cancel(job_id))
    background_loop.run(server.stop(0.5))


def test_no_client_input_reaches_internal_or_a_traceback(
        fuzz_coordinator, tiny_worker, caplog):
    rng = random.Random(SEED)
    server, _runner = fuzz_coordinator
    with caplog.at_level(logging.DEBUG):
        codes, failures = _fuzz(server.address, COORDINATOR_RPCS, rng)
        worker_codes, worker_failures = _fuzz(tiny_worker.address, WORKER_RPCS, rng)
    total = sum(codes.values()) + sum(worker_codes.values())
    assert total >= 200, (codes, worker_codes)
    assert not failures + worker_failures, "\n".join(failures + worker_failures)
    assert "Traceback" not in caplog.text
    assert "rpc_internal_error" not in caplog.text
    # the fuzz reached past parsing: refusals of several kinds, not one blanket answer
    assert len(set(codes) - {"OK"}) >= 3, codes
