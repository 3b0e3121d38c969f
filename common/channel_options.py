"""The gRPC channel and server options of every evalfleet process: message-size limits and the
keepalive pings the servers accept. A module of its own, so that a client's channel needs neither
the health nor the reflection service (``common/rpc.py``, the servers' plumbing)."""

from __future__ import annotations

from typing import Any

#: Largest message either side accepts. Batches are sized well below it (see DEFAULT_BATCH_BYTES).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

MESSAGE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

#: Client channels: message limits plus keepalive pings the servers accept.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *MESSAGE_OPTIONS,
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
]

SERVER_OPTIONS: list[tuple[str, Any]] = [
    *MESSAGE_OPTIONS,
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),
]
