"""Talking to one inference worker: its channel, its model info, and batches on the wire.

Requests travel in batches (never one RPC per request). Each request is encoded once, when a
job's dispatch starts, as the bytes of one ``items`` entry of its kind's request message, so a
batch's request is the concatenation of its items' bytes: the hot path does no per-request
protobuf work on the way out. Answers are idempotent (content-derived ids), so a batch retried
on another worker can never be counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from evalfleet.common.errors import EvalfleetError, FailedPreconditionError, UnavailableError
from evalfleet.common.request_kind import RequestKind
from evalfleet.common.security import ClientSecurity
from evalfleet.server import wire
from evalfleet.v1 import inference_pb2 as pb
from evalfleet.v1 import inference_pb2_grpc as pb_grpc

_SERVICE = "/evalfleet.v1.InferenceService/"


@dataclass(frozen=True)
class WorkItem:
    """One distinct model request: its content id, kind and arguments."""

    request_id: str
    request_type: RequestKind
    arguments: tuple
    generation: pb.GenerationParams | None = None
    chat_messages: bool = False  # the context is JSON chat messages (chat API workers)

    @property
    def prompt(self) -> str:
        """The text a prefix is shared on (the context, or the whole text for rolling)."""
        return self.arguments[0]


def encode_item(item: WorkItem) -> bytes:
    """The item as one ``items`` (field 1) entry of its kind's request message, on the wire."""
    if item.request_type == RequestKind.LOGLIKELIHOOD:
        return wire.encode_loglikelihood(item.request_id, item.arguments[0], item.arguments[1])
    if item.request_type == RequestKind.LOGLIKELIHOOD_ROLLING:
        return wire.encode_rolling(item.request_id, item.arguments[0])
    if item.request_type == RequestKind.GENERATE_UNTIL:
        return wire.encode_generate(item.request_id, item.arguments[0], item.generation,
                                    item.chat_messages)
    raise ValueError(f"unknown request type {item.request_type}")  # pragma: no cover


class RequestFailedError(EvalfleetError):
    """A request that could not be answered, on every try; the job fails with it."""

    code = FailedPreconditionError.code

    def __init__(self, request_id: str, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id


class WorkerClient:
    """A channel to one worker, with the credentials the coordinator presents to it."""

    def __init__(self, address: str, security: ClientSecurity | None = None,
                 options: list[tuple[str, Any]] | None = None) -> None:
        self.address = address
        self.security = security or ClientSecurity()
        self.metadata = self.security.metadata
        self._channel = self.security.channel(address, options)
        self._stub = pb_grpc.InferenceServiceStub(self._channel)
        self._calls = {
            kind: self._channel.unary_unary(_SERVICE + kind.rpc, request_serializer=None,
                                            response_deserializer=None)
            for kind in RequestKind}

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    @property
    def stub(self) -> pb_grpc.InferenceServiceStub:
        """The worker's InferenceService stub (calls need ``metadata=self.metadata``)."""
        return self._stub

    async def model_info(self, timeout_s: float = 10.0) -> pb.ModelInfo:
        """The worker's model info; UnavailableError naming the address if it cannot answer."""
        try:
            return await self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout_s,
                                                 metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(
                f"worker {self.address} did not answer GetModelInfo ({exc.code().name}: "
                f"{exc.details()})") from exc

    def call(self, request_type: RequestKind, payload: bytes, timeout_s: float
             ) -> grpc.aio.UnaryUnaryCall:
        """Send one batch: ``payload`` is the concatenation of its items' ``encode_item``; the
        answer is the response message's bytes (see :func:`wire.split_response`)."""
        return self._calls[request_type](payload, timeout=timeout_s, metadata=self.metadata)

    async def close(self) -> None:
        await self._channel.close()
