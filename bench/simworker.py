"""A simulated inference worker: a real gRPC ``InferenceService`` with no model.

It answers every batch after a fixed delay per batch (plus an optional delay per request),
one batch at a time (``max_concurrent_batches`` 1), with deterministic made-up scores derived
from each request id, so that the coordinator's scheduling, failure handling and throughput can
be measured without a model. It serves health and reflection like a real worker (it is started
with ``evalfleet.common.rpc.start_server``) and can be told to hang, to fail requests, or to
drop dead, for tests. Answers are built as bytes, so the worker itself costs little per request.

Run one: ``python bench/simworker.py --port 50061 --batch_delay 0.1`` (prints "listening on").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import struct
import time
from dataclasses import dataclass, field

import grpc
import numba as nb
import numpy as np

from evalfleet.common.rpc import RunningServer, Service, start_server
from evalfleet.common.security import ServerSecurity
from evalfleet.server.wire import _read_varint  # the coordinator's scan reads them so too
from evalfleet.v1 import inference_pb2 as pb

SERVICE = "evalfleet.v1.InferenceService"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fake_logprob(request_id: str) -> float:
    """A made-up log-probability in [-10, 0), fixed per request id."""
    return -(int(request_id[:8], 16) % 1000 + 1) / 100.0


def _scores_entry(request_id: str) -> bytes:
    """One ``results`` entry (TokenScores) of a Loglikelihood/Rolling response, as bytes."""
    rid = request_id.encode()
    body = (b"\x0a" + _varint(len(rid)) + rid + b"\x12\x04" + struct.pack("<f", fake_logprob(
        request_id)) + b"\x1a\x01\x01")
    return b"\x0a" + _varint(len(body)) + body


def _generation_entry(request_id: str) -> bytes:
    rid = request_id.encode()
    text = f" answer {request_id[:4]}".encode()
    body = b"\x0a" + _varint(len(rid)) + rid + b"\x12" + _varint(len(text)) + text
    return b"\x0a" + _varint(len(body)) + body


@nb.njit(cache=True)
def _varint_into(out, pos, n):
    while n >= 0x80:
        out[pos] = (n & 0x7F) | 0x80
        pos += 1
        n >>= 7
    out[pos] = n
    return pos + 1


@nb.njit(cache=True)
def _scores_from_raw(buf):
    """The ``results`` entries of ``_scores_entry`` for every item of a raw
    LoglikelihoodRequest, in one pass over its bytes; (output, ok). Not ok (the caller parses
    the message instead) when an id is not ASCII hex-led or the bytes are not as expected."""
    n = len(buf)
    out = np.empty(2 * n + 64, np.uint8)
    o = 0
    pos = 0
    while pos < n:
        if buf[pos] != 0x0A:  # only items (field 1, length-delimited) at the top level
            return out[:0], False
        length, pos = _read_varint(buf, pos + 1)
        end = pos + length
        if end > n or length < 2 or buf[pos] != 0x0A or buf[pos + 1] >= 0x80:
            return out[:0], False
        id_len = buf[pos + 1]
        id_start = pos + 2
        if id_len < 8 or id_start + id_len > end or o + id_len + 16 > len(out):
            return out[:0], False
        value = 0
        for j in range(8):
            c = buf[id_start + j]
            if 48 <= c <= 57:
                d = c - 48
            elif 97 <= c <= 102:
                d = c - 87
            elif 65 <= c <= 70:
                d = c - 55
            else:
                return out[:0], False
            value = value * 16 + d
        logprob = np.float32(-((value % 1000) + 1) / 100.0)
        body = 2 + id_len + 6 + 3
        out[o] = 0x0A
        o = _varint_into(out, o + 1, body)
        out[o] = 0x0A
        out[o + 1] = id_len
        out[o + 2:o + 2 + id_len] = buf[id_start:id_start + id_len]
        o += 2 + id_len
        out[o] = 0x12
        out[o + 1] = 4
        out[o + 2:o + 6] = np.array([logprob]).view(np.uint8)
        out[o + 6] = 0x1A
        out[o + 7] = 1
        out[o + 8] = 1
        o += 9
        pos = end
    return out[:o], True


@dataclass
class Script:
    """What the simulated worker does, changeable while it runs (tests)."""

    batch_delay: float = 0.0
    item_delay: float = 0.0
    hang: bool = False  # never answer (a hung worker)
    error_ids: dict[str, tuple[str, bool]] = field(default_factory=dict)  # id -> (msg, retry)
    batches: list[tuple[float, list[str]]] = field(default_factory=list)  # (arrival, ids)
    record: bool = True


class SimulatedWorker:
    """The servicer's methods, as generic handlers answering bytes."""

    def __init__(self, script: Script, fingerprint: str, model_name: str = "sim-model",
                 backend: str = "sim") -> None:
        self.script = script
        self.info = pb.ModelInfo(
            backend=backend, model_name=model_name, revision="local", tokenizer=model_name,
            max_length=2048, fingerprint=fingerprint, dtype="float32", device="none",
            model_args={"pretrained": model_name},
            capabilities=pb.Capabilities(
                loglikelihood=True, loglikelihood_rolling=True, generate_until=True,
                chat_template=pb.CHAT_TEMPLATE_SUPPORT_NONE, max_concurrent_batches=1,
                same_context=True),
            library_versions={"simworker": "1"})
        self._lock = asyncio.Lock()

    async def _answer(self, ids: list[str], entry) -> bytes:
        script = self.script
        if script.record:
            script.batches.append((time.monotonic(), ids))
        async with self._lock:
            started = time.monotonic()
            while script.hang:
                await asyncio.sleep(0.05)
            delay = script.batch_delay + script.item_delay * len(ids)
            if delay > 0:
                await asyncio.sleep(delay)
            parts = []
            for rid in ids:
                failure = script.error_ids.get(rid)
                if failure is None:
                    parts.append(entry(rid))
                else:
                    err = pb.ItemError(message=failure[0], retryable=failure[1])
                    parts.append(pb.TokenScores(request_id=rid, error=err).SerializeToString()
                                 if entry is _scores_entry else
                                 pb.Generation(request_id=rid, error=err).SerializeToString())
                    parts[-1] = b"\x0a" + _varint(len(parts[-1])) + parts[-1]
            cost = pb.BatchCost(compute_seconds=time.monotonic() - started).SerializeToString()
            return b"".join(parts) + b"\x1a" + _varint(len(cost)) + cost

    async def _answer_bytes(self, answers: bytes) -> bytes:
        """``_answer`` for entries already made (no errors, nothing recorded)."""
        async with self._lock:
            started = time.monotonic()
            while self.script.hang:
                await asyncio.sleep(0.05)
            if self.script.batch_delay > 0:
                await asyncio.sleep(self.script.batch_delay)
            cost = pb.BatchCost(compute_seconds=time.monotonic() - started).SerializeToString()
            return answers + b"\x1a" + _varint(len(cost)) + cost

    def handler(self) -> grpc.GenericRpcHandler:
        async def model_info(request, context):
            return self.info

        async def loglikelihood(raw: bytes, context):
            script = self.script
            if not script.record and not script.error_ids and not script.item_delay:
                # Instant answers straight from the request's bytes: on a small machine the
                # simulated workers take little CPU from the coordinator being measured.
                answers, ok = _scores_from_raw(np.frombuffer(raw, dtype=np.uint8))
                if ok:
                    return await self._answer_bytes(answers.tobytes())
            request = pb.LoglikelihoodRequest.FromString(raw)
            return await self._answer([i.request_id for i in request.items], _scores_entry)

        async def rolling(request: pb.LoglikelihoodRollingRequest, context):
            return await self._answer([i.request_id for i in request.items], _scores_entry)

        async def generate(request: pb.GenerateUntilRequest, context):
            return await self._answer([i.request_id for i in request.items], _generation_entry)

        def raw(fn, request_cls):
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request_cls.FromString, response_serializer=None)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "GetModelInfo": grpc.unary_unary_rpc_method_handler(
                model_info, request_deserializer=pb.GetModelInfoRequest.FromString,
                response_serializer=pb.ModelInfo.SerializeToString),
            "Loglikelihood": grpc.unary_unary_rpc_method_handler(
                loglikelihood, request_deserializer=None, response_serializer=None),
            "LoglikelihoodRolling": raw(rolling, pb.LoglikelihoodRollingRequest),
            "GenerateUntil": raw(generate, pb.GenerateUntilRequest),
        })


def sim_fingerprint(name: str = "sim-model") -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


async def start_simulated_worker(script: Script | None = None, *, host: str = "127.0.0.1",
                                 port: int = 0, model_name: str = "sim-model",
                                 security: ServerSecurity | None = None
                                 ) -> tuple[RunningServer, SimulatedWorker]:
    """Serve a simulated worker (health, reflection, auth like a real one)."""
    worker = SimulatedWorker(script or Script(), sim_fingerprint(model_name), model_name)

    def add(servicer, server):
        server.add_generic_rpc_handlers((servicer.handler(),))

    server = await start_server(
        [Service(add, worker, pb.DESCRIPTOR.services_by_name["InferenceService"].full_name)],
        host=host, port=port, security=security, reflection_enabled=False)
    return server, worker


async def _main(args: argparse.Namespace) -> None:
    script = Script(batch_delay=args.batch_delay, item_delay=args.item_delay, record=False)
    _scores_from_raw(np.zeros(0, dtype=np.uint8))  # compiled (or loaded) before serving
    server, _ = await start_simulated_worker(script, host=args.host, port=args.port,
                                             model_name=args.model_name)
    print(f"listening on {server.address}", flush=True)
    await server.server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--batch_delay", type=float, default=0.0)
    parser.add_argument("--item_delay", type=float, default=0.0)
    parser.add_argument("--model_name", default="sim-model")
    from evalfleet.common.logging import configure_logging

    configure_logging(json=True, level="WARNING")
    asyncio.run(_main(parser.parse_args()))
