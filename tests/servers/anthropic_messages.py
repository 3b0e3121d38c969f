"""A local stand-in for Anthropic's Messages API (there is no network here), generating with a
real model through transformers.

Run: ``python tests/servers/anthropic_messages.py --model models/tiny-smollm2 --port N
[--rate-limit-first N] [--retry-after S] [--record FILE]``.

Speaks the documented shapes (https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/api/errors): ``POST /v1/messages`` with the key (``x-api-key``, or
``Authorization: Bearer`` as the official client sends it since 2.x) and ``anthropic-version``
headers; ``messages`` whose content is a string or a list of
``{"type": "text", "text"}`` blocks, optional ``system``, ``max_tokens``, ``stop_sequences``;
answers ``{"id", "type": "message", "role": "assistant", "model", "content": [{"type": "text",
"text"}], "stop_reason": "end_turn" | "max_tokens" | "stop_sequence", "stop_sequence",
"usage": {"input_tokens", "output_tokens"}}``. Errors are ``{"type": "error", "error":
{"type", "message"}}``; ``--rate-limit-first N`` answers the first N requests 429
``rate_limit_error`` with a ``retry-after`` header (``POST /admin/rate-limit {"count",
"retry_after"}`` arms that at run time). ``GET /v1/models`` lists the model.

The Message Batches API (``/v1/messages/batches``) answers each request with the online handler
(:func:`batch_message`); ``--hold-batches``, ``--batch-error-first N`` and the
``/control/...`` requests steer it (anthropic_batches.py, batch_standin.py).

``--prompt-cache-block N`` answers as if the prompt had a cache breakpoint: a prompt's leading
blocks of N tokens that an earlier prompt began with are ``cache_read_input_tokens`` (and left
out of ``input_tokens``, as Anthropic counts them). ``GET /admin/stats`` returns ``{"usage":
{"responses", "prompt_tokens" (input, cached included), "cached_tokens",
"completion_tokens"}}``, the server's own totals of what its answers reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anthropic_batches import AnthropicBatches  # noqa: E402
from batch_standin import BatchRunner, add_batch_arguments  # noqa: E402
from model_engine import Engine  # noqa: E402
from prompt_cache import PromptCache, UsageTotals  # noqa: E402


class State:
    """Server-wide settings and counters."""

    def __init__(self, engine: Engine, name: str, rate_limited: int, retry_after: float,
                 record: str | None) -> None:
        self.engine, self.name = engine, name
        self.rate_limited_left, self.retry_after = rate_limited, retry_after
        self.record = record
        self.lock = threading.Lock()
        self.cache = PromptCache(0)  # --prompt-cache-block: repeated prefixes read as cached
        self.usage = UsageTotals()  # what the answers reported, for GET /admin/stats

    def take_rate_limit(self) -> bool:
        with self.lock:
            if self.rate_limited_left > 0:
                self.rate_limited_left -= 1
                return True
            return False

    def log_request(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        if self.record:
            with self.lock, open(self.record, "a") as fh:
                fh.write(json.dumps({"body": body, "headers": headers}) + "\n")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(block.get("text", "") for block in content
                       if isinstance(block, dict) and block.get("type") == "text")
    raise ValueError("content must be a string or a list of content blocks")


def create_message(state: State, body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: field required")
    if not isinstance(body.get("max_tokens"), int):
        raise ValueError("max_tokens: field required")
    chat = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    chat += [{"role": m["role"], "content": _text(m.get("content"))} for m in messages]
    ids = state.engine.chat_prompt(chat)
    stop = list(body.get("stop_sequences") or [])
    text, out, finish, which = state.engine.generate(ids, body["max_tokens"], stop)
    reason = {"length": "max_tokens"}.get(finish, "stop_sequence" if which else "end_turn")
    cached = state.cache.cached(ids)
    usage = {"input_tokens": len(ids) - cached, "output_tokens": len(out)}
    if state.cache.block:  # as with a cache breakpoint: what was read from the cache
        usage.update(cache_read_input_tokens=cached, cache_creation_input_tokens=0)
    state.usage.add("generate", len(ids), cached, len(out))
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": body.get("model"), "content": [{"type": "text", "text": text}],
            "stop_reason": reason, "stop_sequence": which,
            "usage": usage}


def batch_message(state: State, params: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """(succeeded, message or error object) of one batch request: what ``POST /v1/messages``
    with ``params`` answers online (400 invalid_request_error for a malformed one). Recorded
    (``--record``) as a request with no headers."""
    state.log_request(params, {})
    try:
        return True, create_message(state, params)
    except (ValueError, KeyError, TypeError) as exc:
        return False, {"type": "invalid_request_error", "message": str(exc)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State
    batches: AnthropicBatches | None = None  # /v1/messages/batches and /control/...

    def log_message(self, *args: Any) -> None:
        return

    def _send(self, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, message: str,
               headers: dict[str, str] | None = None) -> None:
        self._send(status, {"type": "error", "error": {"type": kind, "message": message}},
                   headers)

    def do_GET(self) -> None:
        if self.batches is not None and self.batches.handle(self, "GET"):
            return
        if self.path.rstrip("/").split("?")[0] == "/v1/models":
            self._send(200, {"data": [{"type": "model", "id": self.state.name}],
                             "has_more": False})
        elif self.path == "/admin/stats":
            self._send(200, {"usage": self.state.usage.as_dict()})
        else:
            self._error(404, "not_found_error", f"no route {self.path}")

    def do_POST(self) -> None:
        if self.batches is not None and self.batches.handle(self, "POST"):
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._error(400, "invalid_request_error", "body is not JSON")
            return
        headers = {k.lower(): v for k, v in self.headers.items()
                   if k.lower() in ("x-api-key", "authorization", "anthropic-version")}
        if self.path == "/admin/rate-limit":  # tests arm the next 429s here
            with self.state.lock:
                self.state.rate_limited_left = int(body.get("count", 0))
                self.state.retry_after = float(body.get("retry_after", 1.0))
            self._send(200, {"armed": self.state.rate_limited_left})
            return
        self.state.log_request(body, headers)
        if self.path.rstrip("/").split("?")[0] != "/v1/messages":
            self._error(404, "not_found_error", f"no route {self.path}")
            return
        if not headers.get("x-api-key") and not headers.get("authorization", "").startswith(
                "Bearer "):
            self._error(401, "authentication_error", "x-api-key (or Authorization: Bearer) "
                                                     "header is required")
            return
        if not headers.get("anthropic-version"):
            self._error(400, "invalid_request_error", "anthropic-version header is required")
            return
        if self.state.take_rate_limit():
            self._error(429, "rate_limit_error", "Number of request tokens has exceeded your "
                        "per-minute rate limit (stand-in)",
                        {"retry-after": f"{self.state.retry_after:g}"})
            return
        try:
            self._send(200, create_message(self.state, body))
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, "invalid_request_error", str(exc))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory that generates")
    parser.add_argument("--served-name", default="claude-stand-in")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit-first", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--record", default=None)
    add_batch_arguments(parser)
    parser.add_argument("--prompt-cache-block", type=int, default=0, metavar="N",
                        help="report a prompt's leading blocks of N tokens that an earlier "
                             "prompt began with as cache_read_input_tokens (0: no cache)")
    args = parser.parse_args(argv)
    Handler.state = State(Engine(args.model), args.served_name, args.rate_limit_first,
                          args.retry_after, args.record)
    Handler.state.cache = PromptCache(args.prompt_cache_block)
    Handler.batches = AnthropicBatches(
        lambda params: batch_message(Handler.state, params),
        BatchRunner.from_args(args))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
