"""Backend registry: name -> "module:Class", imported only when asked for.

Adding a backend = one module here + one line in ``_REGISTRY``. Optional backends (vllm, ...)
are never imported unless requested, so a missing extra never breaks ``import``.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.registry import Registry

if TYPE_CHECKING:
    from evalfleet.inference.backends.base import Backend

_REGISTRY: Registry[str] = Registry("backend", {
    "hf": "evalfleet.inference.backends.hf:HFBackend",
    "local-completions": "evalfleet.inference.backends.openai_completions:LocalCompletionsBackend",
    "openai-completions":
        "evalfleet.inference.backends.openai_completions:OpenAICompletionsBackend",
    "local-chat-completions": "evalfleet.inference.backends.openai_chat:LocalChatBackend",
    "openai-chat-completions": "evalfleet.inference.backends.openai_chat:OpenAIChatBackend",
    "anthropic-chat": "evalfleet.inference.backends.anthropic_chat:AnthropicChatBackend",
    "vllm": "evalfleet.inference.backends.vllm:VLLMBackend",
}.items())
_ALIASES: dict[str, str] = {
    "hf-auto": "hf",
    "huggingface": "hf",
    "anthropic-chat-completions": "anthropic-chat",
    # The seed's `--model anthropic` (lm-eval's README name; its registry has no such entry).
    "anthropic": "anthropic-chat",
    # The seed's `--model openai` runs gpt-4-turbo and gpt-3.5-turbo: chat models, served only
    # by the chat-completions endpoint, so the alias is the chat backend (their loglikelihood
    # tasks are then refused with the reason, instead of a 404 from /v1/completions).
    "openai": "openai-chat-completions",
}


class UnknownBackendError(InvalidArgumentError):
    """No backend is registered under the requested name."""


def backend_names() -> list[str]:
    """Every registered name, aliases included."""
    return sorted([*_REGISTRY, *_ALIASES])


def canonical_backend_name(name: str) -> str:
    """The registered name ``name`` stands for (itself or the name it is an alias of); raises
    ``UnknownBackendError`` with the closest names. Imports no backend."""
    canonical = _ALIASES.get(name, name)
    if canonical not in _REGISTRY:
        close = difflib.get_close_matches(name, backend_names(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownBackendError(
            f"unknown backend {name!r}{hint} (registered: {', '.join(backend_names())})"
        )
    return canonical


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (or one of its aliases)."""
    target = _REGISTRY[canonical_backend_name(name)]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownBackendError(
            f"backend {name!r} is registered but cannot be imported: {exc}"
        ) from exc
    return getattr(module, class_name)


__all__ = ["UnknownBackendError", "backend_names", "canonical_backend_name", "get_backend"]
