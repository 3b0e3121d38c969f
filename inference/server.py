"""The inference worker's gRPC service: one loaded backend behind ``InferenceService``.

The servicer only translates between protobuf batches and the backend's Python API; model calls
run in a worker thread (torch releases the GIL) one batch at a time, so the event loop stays free
to answer health checks and queue the next batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from evalfleet.common.logging import get_logger
from evalfleet.common.rpc import RunningServer, Service, start_server
from evalfleet.inference.backends import get_backend
from evalfleet.inference.backends.base import Backend, GenerationParams, TokenScores
from evalfleet.v1 import inference_pb2 as pb
from evalfleet.v1 import inference_pb2_grpc as pb_grpc

log = get_logger("worker")
T = TypeVar("T")


def _token_scores_pb(request_id: str, scores: TokenScores) -> pb.TokenScores:
    msg = pb.TokenScores(request_id=request_id)
    msg.logprobs.extend(scores.logprobs.tolist())
    msg.greedy.extend(scores.greedy.tolist())
    return msg


def generation_params_from_pb(params: pb.GenerationParams) -> GenerationParams:
    """Backend generation parameters from their protobuf form."""
    return GenerationParams(
        until=list(params.until),
        max_gen_toks=params.max_gen_toks or 256,
        temperature=params.temperature,
        do_sample=params.do_sample,
        top_p=params.top_p if params.HasField("top_p") else None,
        top_k=params.top_k if params.HasField("top_k") else None,
        seed=params.seed if params.HasField("seed") else None,
    )


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Serves one backend. Batches are computed one at a time, in arrival order.

    A batch whose caller is gone while it waits (deadline passed, call cancelled) is dropped
    unseen: grpc.aio cancels its handler at the lock. A batch already on the model runs to the
    end (a forward cannot be interrupted) and its answer is discarded.
    """

    def __init__(self, backend: Backend, model_args: dict[str, Any] | None = None) -> None:
        self._backend = backend
        self._model_args = {k: str(v) for k, v in (model_args or {}).items()}
        self._compute_lock = asyncio.Lock()

    async def _compute(self, fn: Callable[[Sequence[Any]], list[T]], items: Sequence[Any],
                       kind: str) -> tuple[list[T], int]:
        async with self._compute_lock:
            before = self._backend.positions_computed
            started = time.perf_counter()
            results = await asyncio.to_thread(fn, items)
            positions = self._backend.positions_computed - before
        log.info("batch_done", kind=kind, items=len(items), positions=positions,
                 seconds=round(time.perf_counter() - started, 3))
        return results, positions

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context) -> pb.ModelInfo:
        info = self._backend.model_info()
        return pb.ModelInfo(
            backend=info.backend, model_name=info.model_name, revision=info.revision,
            tokenizer=info.tokenizer, max_length=info.max_length, fingerprint=info.fingerprint,
            dtype=info.dtype, device=info.device, num_parameters=info.num_parameters,
            capabilities=sorted(self._backend.capabilities), eot_token_id=info.eot_token_id,
            bos_token=info.bos_token or "", eos_token=info.eos_token or "",
            pad_token=info.pad_token or "", model_args=self._model_args,
        )

    async def Loglikelihood(self, request: pb.LoglikelihoodRequest, context
                            ) -> pb.LoglikelihoodResponse:
        pairs = [(item.context, item.continuation) for item in request.items]
        scores, positions = await self._compute(self._backend.loglikelihood, pairs,
                                                "loglikelihood")
        return pb.LoglikelihoodResponse(
            results=[_token_scores_pb(item.request_id, s)
                     for item, s in zip(request.items, scores, strict=True)],
            positions_computed=positions,
        )

    async def LoglikelihoodRolling(self, request: pb.LoglikelihoodRollingRequest, context
                                   ) -> pb.LoglikelihoodRollingResponse:
        texts = [item.text for item in request.items]
        scores, positions = await self._compute(self._backend.loglikelihood_rolling, texts,
                                                "loglikelihood_rolling")
        return pb.LoglikelihoodRollingResponse(
            results=[_token_scores_pb(item.request_id, s)
                     for item, s in zip(request.items, scores, strict=True)],
            positions_computed=positions,
        )

    async def GenerateUntil(self, request: pb.GenerateUntilRequest, context
                            ) -> pb.GenerateUntilResponse:
        items = [(item.context, generation_params_from_pb(item.params)) for item in request.items]
        texts, positions = await self._compute(self._backend.generate_until, items,
                                               "generate_until")
        return pb.GenerateUntilResponse(
            results=[pb.Generation(request_id=item.request_id, text=text)
                     for item, text in zip(request.items, texts, strict=True)],
            positions_computed=positions,
        )


def load_backend(backend_name: str, model_args: dict[str, Any],
                 batch_size: int | str = 1) -> Backend:
    """Resolve a backend by registry name and load its model."""
    backend_cls = get_backend(backend_name)
    return backend_cls.from_model_args(model_args, batch_size=batch_size)


async def start_worker(backend: Backend, *, host: str = "127.0.0.1", port: int = 0,
                       model_args: dict[str, Any] | None = None) -> RunningServer:
    """Serve an already loaded backend as an ``InferenceService`` on ``host:port``."""
    servicer = InferenceServicer(backend, model_args)
    return await start_server(
        [Service(pb_grpc.add_InferenceServiceServicer_to_server, servicer,
                 pb.DESCRIPTOR.services_by_name["InferenceService"].full_name)],
        host=host, port=port,
    )
