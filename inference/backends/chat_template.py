"""Chat templates rendered exactly as lm-eval 0.4.13 renders ``--apply_chat_template`` prompts.

``render_conversations`` is lm-eval's ``HFLM.apply_chat_template``: the tokenizer's own
``apply_chat_template`` with ``continue_final_message`` when no generation prompt is added (a
task's ``gen_prefix`` is continued), retried without system messages when the template rejects
them. ``select_template`` is lm-eval's ``TemplateLM.chat_template``: the template text reported
in the results (a named template of a tokenizer that holds several). Note that lm-eval renders
with the tokenizer's default template even when a name is given; evalfleet does the same so that
prompts stay lm-eval's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.logging import get_logger
from evalfleet.inference.backends.base import Conversation

log = get_logger("backend.chat_template")


def select_template(template: str | Mapping[str, str] | None, name: str | None) -> str:
    """The template text lm-eval reports for ``--apply_chat_template[=name]``."""
    if template is None:
        raise InvalidArgumentError(
            "apply_chat_template: the model's tokenizer has no chat template; run without "
            "--apply_chat_template, or give a tokenizer that has one")
    if isinstance(template, Mapping):
        if name:
            if name not in template:
                raise InvalidArgumentError(
                    f"apply_chat_template: the tokenizer has no chat template named {name!r}; "
                    f"available: {', '.join(sorted(template))}")
            return template[name]
        if "default" not in template:
            raise InvalidArgumentError(
                "apply_chat_template: the tokenizer holds several chat templates and none is "
                f"named 'default'; pick one with --apply_chat_template=NAME "
                f"({', '.join(sorted(template))})")
        return template["default"]
    if name:
        log.warning("chat_template_name_ignored", name=name,
                    reason="the tokenizer has a single chat template")
    return template


def render_conversations(tokenizer: Any, conversations: Sequence[Conversation],
                         template_args: Mapping[str, Any] | None = None) -> list[str]:
    """Each conversation rendered to prompt text by the tokenizer's template."""
    extra = dict(template_args or {})
    out = []
    for conversation in conversations:
        history = conversation.as_dicts()
        options = {"tokenize": False,
                   "add_generation_prompt": conversation.add_generation_prompt,
                   "continue_final_message": not conversation.add_generation_prompt, **extra}
        try:
            out.append(tokenizer.apply_chat_template(history, **options))
        except jinja2.exceptions.TemplateError:
            log.warning("chat_template_system_role_removed")
            history = [m for m in history if m["role"] != "system"]
            out.append(tokenizer.apply_chat_template(history, **options))
    return out
