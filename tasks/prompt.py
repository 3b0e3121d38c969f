"""Prompt assembly as lm-eval's ``fewshot_context`` / ``build_qa_turn`` (plain text and chat)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def maybe_delimit(prefix: str | None, suffix: str | None, delimiter: str = " ") -> str:
    """Join with ``delimiter`` unless either side already has whitespace at the joint."""
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    if prefix[-1].isspace() or suffix[0].isspace():
        return prefix + suffix
    return prefix + delimiter + suffix


def requires_delimiter(prefix: str, suffix: str) -> bool:
    """True when neither string has whitespace at the joint."""
    if prefix == "":
        return False
    return not (prefix[-1].isspace() or suffix[0].isspace())


def ends_with_whitespace(s: str | None) -> bool:
    """True when ``s`` ends with whitespace."""
    return bool(s) and s[-1].isspace()  # type: ignore[index]


@dataclass
class Message:
    """One prompt turn; ``delimiter`` is appended when rendered as plain text."""

    role: str
    content: str
    delimiter: str = ""

    def to_dict(self) -> dict[str, str]:
        """Chat-format dict."""
        return {"role": self.role, "content": self.content}

    def to_text(self) -> str:
        """Plain-text rendering."""
        return self.content + self.delimiter


def qa_turn(
    q: Any,
    c: list[str] | None = None,
    a: Any = None,
    gen_prefix: str | None = None,
    tgt_delim: str = " ",
    few_delim: str = "\n\n",
) -> list[Message]:
    """A question turn plus, when an answer (or gen_prefix) is given, the assistant turn."""
    if not isinstance(q, str):
        raise TypeError(f"context is not a string: {q!r}")
    has_answer = a is not None and a != ""
    if has_answer and not gen_prefix or gen_prefix and requires_delimiter(q, gen_prefix):
        user_delim = tgt_delim
    else:
        user_delim = ""
    msgs = [Message("user", q, user_delim)]
    if has_answer:
        if c and isinstance(a, int):
            answer = c[a]
        elif isinstance(a, list):
            answer = a[0]
        else:
            answer = a
        if not isinstance(answer, str):
            raise TypeError(f"answer is not a string: {a!r}")
        msgs.append(Message("assistant", maybe_delimit(gen_prefix, answer, " "), few_delim))
    elif gen_prefix:
        msgs.append(Message("assistant", gen_prefix))
    return msgs


def to_single_turn(messages: list[Message]) -> list[dict[str, str]]:
    """Collapse turns into one user message (plus system / trailing assistant prefill)."""
    messages = [Message(m.role, m.content, m.delimiter) for m in messages]
    system = messages[0] if messages[0].role == "system" else None
    rest = messages[1:] if system else messages
    if rest[-1].role == "assistant":
        body = rest[:-1]
        body[-1].delimiter = ""
        res = [Message("user", "".join(m.to_text() for m in body)).to_dict(), rest[-1].to_dict()]
    else:
        rest[-1].delimiter = ""
        res = [Message("user", "".join(m.to_text() for m in rest)).to_dict()]
    return [system.to_dict(), *res] if system else res


def render(
    messages: list[Message],
    chat_template: Callable[[list[dict[str, str]]], str] | None = None,
    fewshot_as_multiturn: bool = False,
) -> str:
    """Plain text, or the chat template applied to the (multi- or single-turn) messages."""
    if chat_template is None:
        return "".join(m.to_text() for m in messages)
    chat = [m.to_dict() for m in messages] if fewshot_as_multiturn else to_single_turn(messages)
    return chat_template(chat)
