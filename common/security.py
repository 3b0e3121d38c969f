"""Who may call an evalfleet server, and how a client proves it: bearer tokens and TLS.

A server started with a token (``--auth_token_file``) refuses every call without
``authorization: Bearer <token>`` metadata (UNAUTHENTICATED) or with another token
(PERMISSION_DENIED), except the health service, which stays open for load balancers and
Kubernetes probes. TLS (``--tls_cert``/``--tls_key``) encrypts the port; with
``--tls_client_ca`` the server also requires a client certificate signed by that CA (mutual
TLS). Clients (the CLI, the coordinator calling its workers, a worker registering itself) carry
the same settings in a :class:`ClientSecurity`.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from evalfleet.common.errors import InvalidArgumentError

#: Methods every caller may use without a token.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
#: Environment variables the CLI reads when its flags are not given.
TOKEN_ENV = "EVALFLEET_AUTH_TOKEN"
TOKEN_FILE_ENV = "EVALFLEET_AUTH_TOKEN_FILE"
CA_ENV = "EVALFLEET_TLS_CA"


def read_token_file(path: str | os.PathLike, flag: str) -> str:
    """The token in ``path`` (surrounding whitespace removed); INVALID_ARGUMENT naming ``flag``
    when the file is missing or empty."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidArgumentError(f"{flag}: cannot read {path} ({exc.strerror})") from None
    if not token:
        raise InvalidArgumentError(f"{flag}: {path} is empty; put the bearer token in it")
    if any(c.isspace() for c in token):
        raise InvalidArgumentError(f"{flag}: the token in {path} contains whitespace")
    return token


def _read_pem(path: str | os.PathLike | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"{flag}: cannot read {path} ({exc.strerror})") from None
    if b"-----BEGIN" not in data:
        raise InvalidArgumentError(f"{flag}: {path} is not a PEM file")
    return data


@dataclass(frozen=True)
class ServerSecurity:
    """What a server requires of its callers."""

    token: str | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    client_ca: bytes | None = None  # mutual TLS: callers present a certificate signed by it

    @classmethod
    def from_files(cls, *, token_file: str | None = None, tls_cert: str | None = None,
                   tls_key: str | None = None, tls_client_ca: str | None = None
                   ) -> ServerSecurity:
        """Read the flag values' files; INVALID_ARGUMENT naming the flag on any problem."""
        if bool(tls_cert) != bool(tls_key):
            raise InvalidArgumentError("--tls_cert and --tls_key: give both or neither")
        if tls_client_ca and not tls_cert:
            raise InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key "
                                       "(mutual TLS runs over TLS)")
        return cls(token=read_token_file(token_file, "--auth_token_file") if token_file else None,
                   tls_cert=_read_pem(tls_cert, "--tls_cert"),
                   tls_key=_read_pem(tls_key, "--tls_key"),
                   client_ca=_read_pem(tls_client_ca, "--tls_client_ca"))

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def credentials(self) -> grpc.ServerCredentials | None:
        """Server credentials for ``add_secure_port``; None without TLS."""
        if not self.tls:
            return None
        return grpc.ssl_server_credentials(
            [(self.tls_key, self.tls_cert)], root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [BearerTokenInterceptor(self.token)] if self.token else []


@dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches a server: a bearer token, and TLS when ``ca`` is set."""

    token: str | None = None
    ca: bytes | None = None
    cert: bytes | None = None  # client certificate for mutual TLS
    key: bytes | None = None
    server_name: str | None = None  # expected name in the server's certificate, if not the host

    @classmethod
    def from_files(cls, *, token_file: str | None = None, token: str | None = None,
                   ca: str | None = None, cert: str | None = None, key: str | None = None,
                   server_name: str | None = None, flag_prefix: str = "--") -> ClientSecurity:
        """Read the flag values' files (flags named ``{flag_prefix}auth_token_file``,
        ``tls_ca``, ``tls_cert``, ``tls_key``)."""
        p = flag_prefix
        if bool(cert) != bool(key):
            raise InvalidArgumentError(f"{p}tls_cert and {p}tls_key: give both or neither")
        if cert and not ca:
            raise InvalidArgumentError(f"{p}tls_cert needs {p}tls_ca (the CA that signed the "
                                       "server's certificate)")
        if token_file:
            token = read_token_file(token_file, f"{p}auth_token_file")
        return cls(token=token or None, ca=_read_pem(ca, f"{p}tls_ca"),
                   cert=_read_pem(cert, f"{p}tls_cert"), key=_read_pem(key, f"{p}tls_key"),
                   server_name=server_name or None)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token (empty without one)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, address: str, options: list[tuple[str, Any]] | None = None
                ) -> grpc.aio.Channel:
        """A ``grpc.aio`` channel to ``address`` with evalfleet's options; TLS when a CA is
        set. The token travels per call (:attr:`metadata`), so it works without TLS too."""
        from evalfleet.common.channel_options import CHANNEL_OPTIONS

        opts = list(options if options is not None else CHANNEL_OPTIONS)
        if self.ca is None:
            return grpc.aio.insecure_channel(address, options=opts)
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert)
        return grpc.aio.secure_channel(address, credentials, options=opts)


def _deny_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str):
    """A handler of the same kind as ``handler`` that refuses the call."""

    async def unary(request, context):
        await context.abort(code, message)

    async def stream(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream, **kwargs)


def bearer_token(value: str | bytes) -> bytes | None:
    """The token of an ``authorization`` value of the Bearer scheme, whose name is
    case-insensitive (RFC 6750, RFC 9110 11.1: ``bearer TOKEN`` is ``Bearer TOKEN``); None for
    another scheme."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    scheme, space, token = raw.partition(b" ")
    if not space or scheme.lower() != b"bearer":
        return None
    return token.lstrip(b" ")


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the server's bearer token (health checks stay open)."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        given = next((v for k, v in (handler_call_details.invocation_metadata or ())
                      if k == "authorization"), None)
        if given is None:
            return _deny_handler(
                handler, grpc.StatusCode.UNAUTHENTICATED,
                "this server requires a bearer token: send 'authorization: Bearer <token>' "
                "metadata (evalfleet: --auth_token_file or $EVALFLEET_AUTH_TOKEN)")
        token = bearer_token(given)
        if token is None or not hmac.compare_digest(token, self._expected):
            return _deny_handler(handler, grpc.StatusCode.PERMISSION_DENIED,
                                 "the bearer token is not this server's token")
        return handler
