"""Jinja2 rendering configured as lm-eval does (StrictUndefined, trailing newline kept), in
Jinja's sandbox: a task file's template can read a document's fields and call their safe
methods, never reach Python's internals (``cycler.__init__.__globals__.os``...), which lm-eval's
plain ``Environment`` allows. ``!function`` hooks stay code, allowed by the operator."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, Template
from jinja2.sandbox import SandboxedEnvironment


def regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    """``re.sub`` as a Jinja filter (lm-eval's ``regex_replace``)."""
    return re.sub(pattern, repl, string, count=count)


_ENV = SandboxedEnvironment(loader=BaseLoader(), undefined=StrictUndefined,
                            keep_trailing_newline=True)
_ENV.filters["regex_replace"] = regex_replace


@lru_cache(maxsize=4096)
def compile_template(source: str) -> Template:
    """Compile (and cache) a template; raises jinja2.TemplateSyntaxError."""
    return _ENV.from_string(source)


def render(source: str, doc: dict[str, Any]) -> str:
    """Render ``source`` with the doc's fields as variables."""
    return compile_template(source).render(**doc)
