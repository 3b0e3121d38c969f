"""Batched unary RPCs vs a bidirectional stream (and per-request unary) in grpc.aio.

The traffic is evalfleet's: LoglikelihoodRequest batches in, TokenScores out (8 logprobs per
request), served by a servicer that answers instantly, so the figure is pure transport cost.
Run: ``.venv/bin/python bench/bench_transport.py`` — the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc

from evalfleet.common.rpc import CHANNEL_OPTIONS, SERVER_OPTIONS
from evalfleet.v1 import inference_pb2 as pb

SERVICE = "bench.Transport"
CONTEXT = "Question: Which statement best explains why photosynthesis is the foundation? Answer:"


def _answer(request: pb.LoglikelihoodRequest) -> pb.LoglikelihoodResponse:
    response = pb.LoglikelihoodResponse(cost=pb.BatchCost(positions_computed=len(request.items)))
    for item in request.items:
        response.results.add(request_id=item.request_id, logprobs=[-0.5] * 8, greedy=[True] * 8)
    return response


async def _unary(request: pb.LoglikelihoodRequest, context) -> pb.LoglikelihoodResponse:
    return _answer(request)


async def _stream(requests, context):
    async for request in requests:
        yield _answer(request)


async def _serve() -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            _unary, request_deserializer=pb.LoglikelihoodRequest.FromString,
            response_serializer=pb.LoglikelihoodResponse.SerializeToString),
        "Stream": grpc.stream_stream_rpc_method_handler(
            _stream, request_deserializer=pb.LoglikelihoodRequest.FromString,
            response_serializer=pb.LoglikelihoodResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _batches(n: int, size: int) -> list[pb.LoglikelihoodRequest]:
    out = []
    for start in range(0, n, size):
        out.append(pb.LoglikelihoodRequest(items=[
            pb.LoglikelihoodItem(request_id=f"{i:064d}", context=CONTEXT,
                                 continuation=f" choice number {i}")
            for i in range(start, min(n, start + size))]))
    return out


async def _time_unary(channel, batches, in_flight: int) -> float:
    call = channel.unary_unary(f"/{SERVICE}/Unary",
                               request_serializer=pb.LoglikelihoodRequest.SerializeToString,
                               response_deserializer=pb.LoglikelihoodResponse.FromString)
    semaphore = asyncio.Semaphore(in_flight)

    async def one(batch):
        async with semaphore:
            return await call(batch, timeout=60)

    start = time.perf_counter()
    responses = await asyncio.gather(*(one(b) for b in batches))
    elapsed = time.perf_counter() - start
    assert sum(len(r.results) for r in responses) == sum(len(b.items) for b in batches)
    return elapsed


async def _time_stream(channel, batches) -> float:
    call = channel.stream_stream(f"/{SERVICE}/Stream",
                                 request_serializer=pb.LoglikelihoodRequest.SerializeToString,
                                 response_deserializer=pb.LoglikelihoodResponse.FromString)
    start = time.perf_counter()
    stream = call(iter(batches), timeout=60)
    answered = 0
    async for response in stream:
        answered += len(response.results)
    elapsed = time.perf_counter() - start
    assert answered == sum(len(b.items) for b in batches)
    return elapsed


async def main(n: int, batch: int, repeats: int) -> dict:
    server, port = await _serve()
    results: dict[str, float] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as ch:
        batched = _batches(n, batch)
        single = _batches(min(n, 5000), 1)
        await _time_unary(ch, batched[:2], 2)  # warm-up
        results["unary_batched_s"] = min([await _time_unary(ch, batched, 2)
                                          for _ in range(repeats)])
        results["stream_batched_s"] = min([await _time_stream(ch, batched)
                                           for _ in range(repeats)])
        per_request = min([await _time_unary(ch, single, 64) for _ in range(repeats)])
        results["unary_per_request_s"] = per_request * n / len(single)
    await server.stop(0)
    rate = {k.removesuffix("_s") + "_req_per_s": n / v for k, v in results.items()}
    print(f"{n} requests, batches of {batch}")
    for key, value in rate.items():
        print(f"  {key:32s} {value:12,.0f}")
    return {"bench": "transport", "requests": n, "batch": batch, **{
        k: round(v, 4) for k, v in results.items()},
        "stream_over_unary": round(results["stream_batched_s"] / results["unary_batched_s"], 3),
        "per_request_over_batched": round(
            results["unary_per_request_s"] / results["unary_batched_s"], 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.requests, args.batch, args.repeats))))
