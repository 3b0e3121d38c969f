"""A small OpenAI-compatible server that serves a real model through transformers with vLLM's
response shapes, for tests and benchmarks where vLLM itself cannot run (no GPU).

Run: ``python tests/servers/openai_compat.py --model models/smollm2-135m [--port 0]
[--served-name NAME] [--delay S] [--rate-limit-first N] [--record FILE]``; it prints
``PORT <n>`` on stdout once it listens on 127.0.0.1.

OpenAI's Files and Batch APIs (``/v1/files``, ``/v1/batches``) answer each batch line with the
online handler (:func:`batch_line`); ``--hold-batches``, ``--batch-error-first N`` and the
``/control/...`` requests steer them (openai_batches.py, batch_standin.py).

Shapes follow vLLM's OpenAI-compatible server (docs: "OpenAI-Compatible Server",
https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html; code:
``vllm/entrypoints/openai/completion/serving.py``, ``request_output_to_completion_response``
and ``_create_completion_logprobs``, and the ``CompletionResponse`` / ``CompletionLogProbs``
models of ``vllm/entrypoints/openai/completion/protocol.py``):

* ``POST /v1/completions``: ``prompt`` is a string, a list of strings, a list of token ids or a
  list of token-id lists (one choice per prompt, ``index`` in prompt order). With ``echo`` the
  choice's ``text`` is the prompt text followed by the generated text, and ``logprobs`` covers
  the prompt tokens then the generated ones: ``tokens`` (each token decoded on its own),
  ``token_logprobs`` (``null`` for the first prompt token, which has no context),
  ``top_logprobs`` (``null`` first, then per position a dict holding the position's own token
  and the ``logprobs`` most likely tokens, keyed by decoded text, values clamped at -9999.0)
  and ``text_offset``. ``usage`` counts prompt and completion tokens; ``finish_reason`` is
  ``"length"`` or ``"stop"`` with ``stop_reason`` the stop string.
* ``POST /v1/chat/completions``: the model's chat template with a generation prompt, greedy
  generation, ``choices[0].message.content``; no prompt logprobs (as vLLM's chat endpoint).
* ``GET /v1/models``; errors as ``{"error": {"message", "type", "param", "code"}}``.

Greedy decoding only (temperature is ignored: tests and benchmarks ask for 0). ``--delay``
sleeps before each answer outside the model lock (a fixed network/queue latency);
``--rate-limit-first N`` answers the first N requests 429 with ``Retry-After: 1``; ``--memo``
answers a repeated request body from memory (for benchmarks of client concurrency).
``--text-prompts-only`` answers token-id prompts HTTP 500 with pydantic's "Input should be a
valid string" (quoting the ids and a traceback), as llama-cpp-python's server does.
``--record`` writes each request's path, body and Authorization header (null when absent).
``POST /admin/mode {"shifted": true}`` makes echoed prompt logprobs shifted by one position (each
token scored from the distribution after it, as llama-cpp-python's server does), for tests of
the logprob probe; ``{"shifted": false}`` restores them. ``{"fail": 500}`` answers every
completion with that status (its message quoting the prompt), ``{"fail": 0}`` stops.

``--reasoning SCRIPT`` makes the chat endpoint a scripted reasoning model (no generation; the
``--model`` is not loaded): SCRIPT is a JSON list of cases ``{"content": str | null,
"reasoning_content": str (optional), "finish_reason": "stop" | "length", "usage": {...}
(optional)}``; a conversation is answered by case number
``int(sha256(last user message's content), 16) % len(cases)`` (see :func:`reasoning_case`),
with the case's ``usage`` (default zeros) as the response's.

``--max-concurrent N`` is a rate-limited endpoint (for tests of adaptive concurrency): a
completion or chat request arriving while N are being answered gets 429 with
``Retry-After: --retry-after`` (default 1 s); without ``--reasoning`` the chat endpoint then
answers ``"The best answer is A"`` with no model loaded, its usage counted over the messages'
contents and the answer with ``--model``'s tokenizer.json (no chat template).
``GET /admin/stats`` returns ``{"answered", "rate_limited", "peak_concurrent", "usage"}``,
``usage`` being the server's own totals of what its answers reported (``responses``,
``prompt_tokens``, ``cached_tokens``, ``completion_tokens``; the same by request kind under
``echo`` and ``generate``).

``--prompt-cache-block N`` is a provider's automatic prompt cache: a prompt's leading blocks of
N tokens that an earlier prompt began with are reported as
``usage.prompt_tokens_details.cached_tokens`` (as OpenAI does), e.g. a shared few-shot prefix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_standin import BatchRunner, add_batch_arguments  # noqa: E402
from openai_batches import OpenAIBatches  # noqa: E402
from prompt_cache import PromptCache, UsageTotals, token_counter  # noqa: E402

if TYPE_CHECKING:  # imported in main() unless --reasoning (which needs no model nor torch)
    from model_engine import Engine, Position


class State:
    """Server-wide settings and counters."""

    def __init__(self, engine: Engine, name: str, delay: float, rate_limited: int,
                 record: str | None, memo: bool = False, text_only: bool = False) -> None:
        self.engine, self.name, self.delay = engine, name, delay
        self.rate_limited_left = rate_limited
        self.record = record
        self.lock = threading.Lock()
        self.memo: dict[str, dict[str, Any]] | None = {} if memo else None
        self.shifted = False  # POST /admin/mode {"shifted": true}: logprobs shifted by one
        self.text_only = text_only  # --text-prompts-only: token-id prompts get HTTP 500
        self.fail = 0  # POST /admin/mode {"fail": status}: every completion fails so
        self.reasoning: list[dict[str, Any]] | None = None  # --reasoning: scripted answers
        self.max_concurrent = 0  # --max-concurrent: 429 above this many requests in progress
        self.retry_after = "1"
        self.in_progress = self.peak = self.answered = self.rate_limited = 0
        self.cache = PromptCache(0)  # --prompt-cache-block: repeated prefixes read as cached
        self.usage = UsageTotals()  # what the answers reported, for /admin/stats
        #: counts tokens for the rate-limited stand-in's scripted answers (no model loaded)
        self.count_tokens: Callable[[str], int] | None = None

    def enter(self) -> bool:
        """Count a request in progress; False (and not counted) above ``--max-concurrent``."""
        with self.lock:
            if self.max_concurrent and self.in_progress >= self.max_concurrent:
                self.rate_limited += 1
                return False
            self.in_progress += 1
            self.peak = max(self.peak, self.in_progress)
            return True

    def leave(self, answered: bool) -> None:
        with self.lock:
            self.in_progress -= 1
            self.answered += int(answered)

    def answer(self, handler, body: dict[str, Any]) -> dict[str, Any]:
        """``handler(self, body)``, remembered per request body with ``--memo``."""
        if self.memo is None:
            return handler(self, body)
        key = json.dumps([handler.__name__, self.shifted, body], sort_keys=True)
        with self.lock:
            hit = self.memo.get(key)
        if hit is None:
            hit = handler(self, body)
            with self.lock:
                self.memo[key] = hit
        return hit

    def take_rate_limit(self) -> bool:
        with self.lock:
            if self.rate_limited_left > 0:
                self.rate_limited_left -= 1
                return True
            return False

    def log_request(self, path: str, body: dict[str, Any], authorization: str | None) -> None:
        if self.record:
            with self.lock, open(self.record, "a") as fh:
                fh.write(json.dumps({"path": path, "body": body,
                                     "authorization": authorization}) + "\n")


def _clamp(x: float) -> float:
    return max(x, -9999.0)


def _logprobs(engine: Engine, ids: list[int], positions: list[Position | None],
              k: int) -> dict[str, Any]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = 0
    for tid, pos in zip(ids, positions, strict=True):
        piece = engine.piece(tid)
        tokens.append(piece)
        offsets.append(offset)
        offset += len(piece)
        if pos is None:
            token_logprobs.append(None)
            tops.append(None)
            continue
        token_logprobs.append(_clamp(pos.logprob))
        entry = {piece: _clamp(pos.logprob)}  # the position's own token first, as vLLM
        for rank, (alt, lp) in enumerate(pos.top[:k], start=1):
            if rank <= k and alt != tid:
                entry.setdefault(engine.piece(alt), _clamp(lp))
        tops.append(entry)
    return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": tokens,
            "top_logprobs": tops}


def completion(state: State, body: dict[str, Any]) -> dict[str, Any]:
    engine = state.engine
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                   and isinstance(prompt[0], int)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
    else:
        raise ValueError("prompt must be a string, a list of strings or token ids")
    max_tokens = int(body.get("max_tokens") or 16)
    echo = bool(body.get("echo"))
    k = body.get("logprobs")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    choices, n_prompt, n_out, n_cached = [], 0, 0, 0
    for index, p in enumerate(prompts):
        ids = engine.encode(p) if isinstance(p, str) else [int(t) for t in p]
        text_in = p if isinstance(p, str) else engine.tokenizer.decode(ids)
        n_prompt += len(ids)
        n_cached += state.cache.cached(ids)
        if k is not None:
            positions, nxt = engine.prompt_logprobs(ids, int(k), shifted=state.shifted)
        if k is not None and max_tokens == 1:
            out_ids, finish, reason = [nxt.token_id], "length", None
            out_text = engine.piece(nxt.token_id)
            out_positions: list[Position | None] = [nxt]
        else:
            out_text, out_ids, finish, reason = engine.generate(ids, max_tokens, stop)
            out_positions = []
            if k is not None:  # logprobs of generated tokens beyond the first: not needed here
                out_positions = [nxt] + [None] * (len(out_ids) - 1)
        n_out += len(out_ids)
        logprobs = None
        if k is not None:
            if echo:
                logprobs = _logprobs(engine, ids + out_ids, [None, *positions, *out_positions],
                                     int(k))
            else:
                logprobs = _logprobs(engine, out_ids, out_positions, int(k))
        choices.append({"index": index, "text": (text_in if echo else "") + out_text,
                        "logprobs": logprobs, "finish_reason": finish, "stop_reason": reason,
                        "prompt_logprobs": None})
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": state.name, "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_out,
                      "completion_tokens": n_out,
                      "prompt_tokens_details": {"cached_tokens": n_cached}}}


def reasoning_case(messages: list[dict[str, Any]], cases: list[dict[str, Any]]
                   ) -> dict[str, Any]:
    """The scripted case answering ``messages`` (``--reasoning``)."""
    last_user = [m.get("content") or "" for m in messages if m.get("role") == "user"][-1]
    return cases[int(hashlib.sha256(last_user.encode()).hexdigest(), 16) % len(cases)]


def scripted_chat(state: State, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A reasoning model's response from the ``--reasoning`` script (vLLM's shape with a
    reasoning parser: ``message.reasoning_content`` beside ``message.content``)."""
    case = reasoning_case(messages, state.reasoning or [])
    message: dict[str, Any] = {"role": "assistant", "content": case["content"],
                               "tool_calls": []}
    if "reasoning_content" in case:
        message["reasoning_content"] = case["reasoning_content"]
    usage = {"prompt_tokens": 0, "completion_tokens": 0, **case.get("usage", {})}
    if "usage" not in case and state.count_tokens is not None:  # the rate-limited stand-in
        usage["prompt_tokens"] = sum(state.count_tokens(str(m.get("content") or ""))
                                     for m in messages)
        usage["completion_tokens"] = state.count_tokens(case["content"] or "")
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": state.name,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": case["finish_reason"], "stop_reason": None}],
            "usage": usage}


def chat_completion(state: State, body: dict[str, Any]) -> dict[str, Any]:
    engine = state.engine
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    if state.reasoning is not None:
        return scripted_chat(state, messages)
    ids = engine.chat_prompt(messages)
    max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    text, out_ids, finish, reason = engine.generate(ids, max_tokens, stop)
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": state.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                 "tool_calls": []},
                         "logprobs": None, "finish_reason": finish, "stop_reason": reason}],
            "usage": {"prompt_tokens": len(ids), "total_tokens": len(ids) + len(out_ids),
                      "completion_tokens": len(out_ids),
                      "prompt_tokens_details": {"cached_tokens": state.cache.cached(ids)}}}


def count_usage(state: State, body: dict[str, Any], payload: dict[str, Any]) -> None:
    """Count an answer's usage in the server's totals (``GET /admin/stats``)."""
    usage = payload.get("usage") or {}
    state.usage.add("echo" if body.get("echo") else "generate",
                    int(usage.get("prompt_tokens") or 0),
                    int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
                    int(usage.get("completion_tokens") or 0))


def batch_line(state: State, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of one batch line: what ``POST url`` with ``body`` answers
    online (the same model check, handler and 400 for a malformed request; its usage counted
    in the server's totals)."""
    handler = {"/v1/completions": completion, "/v1/chat/completions": chat_completion}[url]
    if body.get("model") != state.name:
        return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                               "type": "NotFoundError", "param": None, "code": 404}}
    try:
        payload = state.answer(handler, body)
    except (ValueError, TypeError) as exc:
        return 400, {"error": {"message": str(exc), "type": "BadRequestError", "param": None,
                               "code": 400}}
    count_usage(state, body, payload)
    return 200, payload


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their pooled connections
    state: State
    batches: OpenAIBatches | None = None  # /v1/files, /v1/batches and /control/...

    def log_message(self, *args: Any) -> None:  # quiet
        return

    def _send(self, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str,
               headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None,
                                      "code": status}}, headers)

    def do_GET(self) -> None:
        if self.batches is not None and self.batches.handle(self, "GET"):
            return
        if self.path == "/admin/stats":
            st = self.state
            self._send(200, {"answered": st.answered, "rate_limited": st.rate_limited,
                             "peak_concurrent": st.peak, "usage": st.usage.as_dict()})
        elif self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": self.state.name, "object": "model", "owned_by": "evalfleet-tests"}]})
        else:
            self._error(404, f"no route {self.path}", "NotFoundError")

    def do_POST(self) -> None:
        if self.batches is not None and self.batches.handle(self, "POST"):
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._error(400, "body is not JSON", "BadRequestError")
            return
        if self.path == "/admin/mode":  # tests turn the server bad (and good again) here
            self.state.shifted = bool(body.get("shifted", False))
            self.state.fail = int(body.get("fail", 0))
            self._send(200, {"shifted": self.state.shifted, "fail": self.state.fail})
            return
        self.state.log_request(self.path, body, self.headers.get("Authorization"))
        if self.state.take_rate_limit():
            self._error(429, "rate limited (test server)", "RateLimitError",
                        {"Retry-After": "1"})
            return
        routes = {"/v1/completions": completion, "/v1/chat/completions": chat_completion}
        handler = routes.get(self.path.rstrip("/"))
        if handler is None:
            self._error(404, f"no route {self.path}", "NotFoundError")
            return
        if body.get("model") != self.state.name:
            self._error(404, f"The model `{body.get('model')}` does not exist.",
                        "NotFoundError")
            return
        prompt = body.get("prompt")
        if self.state.fail:
            self._error(self.state.fail, f"the engine failed on prompt {prompt!r}",
                        "InternalServerError")
            return
        if self.state.text_only and isinstance(prompt, list) and prompt \
                and not isinstance(prompt[0], str):
            # llama-cpp-python 0.3's answer, word for word but for the path
            self._error(500, "2 validation errors:\n  {'type': 'string_type', 'loc': ('body', "
                             "'prompt', 'str'), 'msg': 'Input should be a valid string', "
                             f"'input': {prompt!r}}}\n  {{'type': 'string_type', 'loc': ('body', "
                             "'prompt', 'list[str]', 0), 'msg': 'Input should be a valid "
                             f"string', 'input': {prompt[0]!r}}}\n\n  File \"llama_cpp/server/"
                             "app.py\", line 264, in create_completion\n    POST /v1/completions",
                             "internal_server_error")
            return
        if not self.state.enter():
            self._error(429, "too many concurrent requests (test server)", "RateLimitError",
                        {"Retry-After": self.state.retry_after})
            return
        try:
            if self.state.delay:
                time.sleep(self.state.delay)
            payload = self.state.answer(handler, body)
        except (ValueError, TypeError) as exc:
            self.state.leave(False)
            self._error(400, str(exc), "BadRequestError")
            return
        except BaseException:
            self.state.leave(False)
            raise
        self.state.leave(True)  # done before the reply leaves: the client may call again at once
        count_usage(self.state, body, payload)
        self._send(200, payload)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--served-name", default=None, help="model name clients ask for")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--rate-limit-first", type=int, default=0)
    parser.add_argument("--record", default=None, help="append each request body to FILE")
    parser.add_argument("--text-prompts-only", action="store_true",
                        help="answer token-id prompts HTTP 500 (llama-cpp-python's server)")
    parser.add_argument("--memo", action="store_true",
                        help="answer a repeated request from memory (benchmarks: the latency "
                             "is then --delay alone)")
    parser.add_argument("--reasoning", default=None, metavar="SCRIPT",
                        help="answer chat requests from a JSON list of scripted reasoning cases")
    parser.add_argument("--max-concurrent", type=int, default=0, metavar="N",
                        help="answer 429 to a request arriving while N are in progress; chat "
                             "answers are then scripted (no model loaded)")
    parser.add_argument("--retry-after", default="1", help="Retry-After of those 429s")
    add_batch_arguments(parser)
    parser.add_argument("--prompt-cache-block", type=int, default=0, metavar="N",
                        help="report a prompt's leading blocks of N tokens that an earlier "
                             "prompt began with as cached_tokens (0: no prompt cache)")
    args = parser.parse_args(argv)
    if args.max_concurrent and not args.reasoning:
        args.reasoning = "-"  # a rate-limited stand-in: scripted chat answers, no model
    if args.reasoning:
        engine = None
    else:
        from model_engine import Engine

        engine = Engine(args.model)
    Handler.state = State(engine, args.served_name or args.model, args.delay,
                          args.rate_limit_first, args.record, args.memo,
                          args.text_prompts_only)
    if args.reasoning == "-":
        Handler.state.reasoning = [{"content": "The best answer is A", "finish_reason": "stop"}]
        Handler.state.count_tokens = token_counter(args.model)
    elif args.reasoning:
        Handler.state.reasoning = json.loads(Path(args.reasoning).read_text())
    Handler.state.max_concurrent = args.max_concurrent
    Handler.batches = OpenAIBatches(
        lambda url, body: batch_line(Handler.state, url, body),
        BatchRunner.from_args(args))
    Handler.state.retry_after = args.retry_after
    Handler.state.cache = PromptCache(args.prompt_cache_block)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
