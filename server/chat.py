"""Chat-template rendering for prompts that the coordinator builds centrally.

Prompts never depend on the number of workers, so the coordinator builds them all; with
``--apply_chat_template`` it needs the model's template. Two ways, chosen by the worker's
``Capabilities.chat_template``:

* RENDER: the worker renders each conversation with the model's own renderer (hf: the
  tokenizer's ``apply_chat_template``) through its ``ApplyChatTemplate`` RPC.
* MESSAGES: chat APIs apply their template server-side; the prompt is the conversation as JSON
  (lm-eval's ``JsonChatStr``) and travels as chat messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from evalfleet.common.errors import FailedPreconditionError
from evalfleet.v1 import inference_pb2 as ipb

#: Renders a conversation; lm-eval's ``chat_template(messages, add_generation_prompt=...)``.
ChatTemplate = Callable[..., str]


@dataclass(frozen=True)
class ChatRenderer:
    """The ``chat_template`` callable the task engine renders prompts with, plus the template
    lm-eval reports in its results (``chat_template``, ``chat_template_sha``)."""

    render: ChatTemplate
    template: str | None
    template_sha: str | None
    messages: bool = False  # prompts are JSON chat messages (MESSAGES mode)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_messages_renderer() -> ChatRenderer:
    """MESSAGES mode: the conversation as JSON text, as lm-eval sends it to chat APIs."""

    def render(chat: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return json.dumps(chat, ensure_ascii=False)

    return ChatRenderer(render, template=None, template_sha=None, messages=True)


class _WorkerTemplate:
    """Renders conversations through a worker's ``ApplyChatTemplate``; equal ones once.

    Blocking: the planner calls it from its thread and each call runs on ``loop``.
    """

    def __init__(self, stub, template_name: str, loop: asyncio.AbstractEventLoop,
                 timeout_s: float, metadata: tuple = ()) -> None:
        self._stub = stub
        self._metadata = metadata
        self._name = template_name
        self._loop = loop
        self._timeout_s = timeout_s
        self._cache: dict[tuple, str] = {}

    async def _render(self, chat: list[dict[str, str]], add_generation_prompt: bool) -> str:
        conversation = ipb.ChatConversation(
            messages=[ipb.ChatMessage(role=m["role"], content=m["content"]) for m in chat],
            add_generation_prompt=add_generation_prompt)
        response = await self._stub.ApplyChatTemplate(
            ipb.ApplyChatTemplateRequest(template_name=self._name,
                                         conversations=[conversation]),
            timeout=self._timeout_s, metadata=self._metadata)
        return response.prompts[0]

    def __call__(self, chat: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        key = (tuple((m["role"], m["content"]) for m in chat), add_generation_prompt)
        if key not in self._cache:
            self._cache[key] = asyncio.run_coroutine_threadsafe(
                self._render(chat, add_generation_prompt), self._loop).result()
        return self._cache[key]


async def worker_renderer(stub, template_name: str, *, timeout_s: float = 60.0,
                          metadata: tuple = ()) -> ChatRenderer:
    """RENDER mode: conversations rendered by a worker's ``ApplyChatTemplate`` (``stub``;
    ``metadata`` carries the coordinator's credentials)."""
    info = await stub.ApplyChatTemplate(
        ipb.ApplyChatTemplateRequest(template_name=template_name), timeout=timeout_s,
        metadata=metadata)
    render = _WorkerTemplate(stub, template_name, asyncio.get_running_loop(), timeout_s,
                             metadata)
    return ChatRenderer(render, info.template, info.template_sha)


def require_chat_support(support: int, worker: str) -> None:
    """FAILED_PRECONDITION when a worker cannot take chat-template prompts at all."""
    if support not in (ipb.CHAT_TEMPLATE_SUPPORT_RENDER, ipb.CHAT_TEMPLATE_SUPPORT_MESSAGES):
        raise FailedPreconditionError(
            f"apply_chat_template: worker {worker} serves a model without a chat template; "
            "run without --apply_chat_template, or serve a model (or tokenizer) that has one")


def system_instruction_sha(text: str | None) -> str | None:
    """lm-eval's ``system_instruction_sha``."""
    return _sha256(text) if text else None
