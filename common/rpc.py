"""gRPC plumbing shared by the coordinator and the workers.

Every evalfleet server is a ``grpc.aio`` server with explicit message-size limits, the standard
health service (``grpc.health.v1``), server reflection, an interceptor that maps user errors to
their status, and a graceful shutdown that first reports NOT_SERVING.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from evalfleet.common.channel_options import (  # noqa: F401 - MESSAGE_OPTIONS re-exported
    CHANNEL_OPTIONS,
    MAX_MESSAGE_BYTES,
    MESSAGE_OPTIONS,
    SERVER_OPTIONS,
)
from evalfleet.common.errors import EvalfleetError, UnavailableError, status_for
from evalfleet.common.logging import get_logger
from evalfleet.common.security import ServerSecurity

log = get_logger("rpc")


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns exceptions raised by handlers into gRPC statuses with a clear message.

    :class:`EvalfleetError` keeps its own status (INVALID_ARGUMENT, NOT_FOUND, ...); anything else
    is INTERNAL and logged with its traceback.
    """

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler


class _Undecodable:
    """A request whose bytes are not the method's message (answered INVALID_ARGUMENT by the
    handler, where gRPC would answer UNKNOWN and log a traceback per call)."""

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's
            return _Undecodable(f"{type(exc).__name__}: {exc}")

    return parse


async def _refuse_undecodable(request: _Undecodable, context: grpc.aio.ServicerContext,
                              method: str) -> None:
    log.info("rpc_undecodable_request", method=method, error=request.error)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{method}: the request's bytes are not a valid message for this "
                        f"method ({request.error[:200]}); send the message from its .proto")


#: Longest status message sent (gRPC refuses trailers over 16 KiB; a message quoting a huge
#: argument must not turn into a transport error).
MAX_STATUS_MESSAGE = 4000


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    code, message = status_for(exc)
    if len(message) > MAX_STATUS_MESSAGE:
        message = message[:MAX_STATUS_MESSAGE] + f"... ({len(message)} characters)"
    if isinstance(exc, EvalfleetError):
        log.info("rpc_user_error", method=method, code=code.name, message=message)
    else:
        log.exception("rpc_internal_error", method=method)
    await context.abort(code, message)


def _wrap_unary(inner: Callable, method: str) -> Callable:
    async def handler(request, context):
        if isinstance(request, _Undecodable):
            await _refuse_undecodable(request, context, method)
        try:
            return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            await _abort(context, exc, method)

    return handler


def _wrap_stream(inner: Callable, method: str) -> Callable:
    async def handler(request, context):
        if isinstance(request, _Undecodable):
            await _refuse_undecodable(request, context, method)
        try:
            async for item in inner(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            await _abort(context, exc, method)

    return handler


@dataclass
class Service:
    """One servicer to mount: its generated ``add_*_to_server`` function and full name."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    full_name: str


@dataclass
class RunningServer:
    """A started server, the port it listens on, and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    service_names: tuple[str, ...]
    host: str = "127.0.0.1"
    _on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def address(self) -> str:
        """host:port to reach it (loopback when it listens on every interface)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "[::]", "::") else self.host
        return f"{host}:{self.port}"

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback`` after the server has stopped (e.g. close the backend)."""
        self._on_stop.append(callback)

    async def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, let in-flight calls finish within ``grace`` seconds, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for callback in self._on_stop:
            await callback()


async def start_server(
    services: Sequence[Service],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    reflection_enabled: bool = True,
    security: ServerSecurity | None = None,
    max_receive_bytes: int = MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Start a ``grpc.aio`` server with health, reflection and error mapping.

    ``port=0`` picks a free ephemeral port; the chosen one is in the result. ``security``
    adds the bearer-token check (health stays open) and TLS; ``max_receive_bytes`` bounds a
    request message (larger ones get RESOURCE_EXHAUSTED from gRPC itself).
    """
    security = security or ServerSecurity()
    options = [o for o in SERVER_OPTIONS if o[0] != "grpc.max_receive_message_length"]
    options.append(("grpc.max_receive_message_length", max_receive_bytes))
    server = grpc.aio.server(
        interceptors=[*security.interceptors(), ErrorMappingInterceptor()], options=options
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in services:
        service.add_to_server(service.servicer, server)
    names = tuple(s.full_name for s in services)
    if reflection_enabled:
        reflection.enable_server_reflection(
            (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            server,
        )
    credentials = security.credentials()
    bound = (server.add_secure_port(f"{host}:{port}", credentials) if credentials is not None
             else server.add_insecure_port(f"{host}:{port}"))
    if bound == 0:
        raise UnavailableError(f"cannot listen on {host}:{port} (port in use or not permitted)")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health.set("", serving)
    for name in names:
        await health.set(name, serving)
    log.info("server_started", host=host, port=bound, services=list(names), tls=security.tls,
             mutual_tls=security.client_ca is not None, auth=security.token is not None)
    return RunningServer(server=server, port=bound, health=health, service_names=names,
                         host=host)


def insecure_channel(address: str) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel with evalfleet's message limits and keepalive settings."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
