"""Secrets in arguments: the one place that knows which keys hold them, and how they are hidden.

A key is secret when its name (case-insensitive, ``_`` or ``-`` between words) is or ends in
``api_key``/``apikey``, ``key``, ``token``, ``password``/``passwd``/``passphrase``,
``secret``, ``credential(s)``, ``authorization`` or ``cookie`` (``api_key``, ``hf_token``,
``aws_secret_access_key``, ``X-Api-Key``, ...), but not a tokenizer's special token
(``add_bos_token``, ``pad_token``). Its value is shown as ``***`` wherever it leaves the
process that uses it: results, the job's stored spec, API answers, trackers, logs. Values that
are not secrets in themselves stay (``None``, ``""``, ``True``/``False``: ``token=True`` means
"use the stored login"). A ``header``/``headers`` value is redacted entry by entry (its
``Authorization``), and a URL's password (``https://user:PASSWORD@host``) wherever it appears.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"

_SECRET_NAME = re.compile(
    r"^(?:.*[_-])?(?:api[_-]?key|apikey|key|token|password|passwd|passphrase|secret"
    r"|credentials?|authorization|cookie)$", re.IGNORECASE)
#: A tokenizer's special tokens (``add_bos_token=True``, ``pad_token=<pad>``): not secrets.
_SPECIAL_TOKEN = re.compile(r"^(?:.*[_-])?(?:bos|eos|pad|unk|sep|cls|mask|eot|eod|stop|start|end"
                            r"|special)[_-]token$", re.IGNORECASE)
_HEADERS = re.compile(r"^headers?$", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):[^/@\s]*@")
_QUERY_SECRET = re.compile(r"([?&][^=&#\s]+=)([^&#\s]*)")
_KV_SEPARATORS = re.compile(r"([, ])")


def is_secret_key(name: Any) -> bool:
    """Whether a key of ``model_args``, ``metadata`` or a header names a secret."""
    text = str(name).strip()
    return bool(_SECRET_NAME.match(text)) and not _SPECIAL_TOKEN.match(text)


def _hides_something(value: Any) -> bool:
    return value is not None and not isinstance(value, bool) and value != ""


def redact_url(url: str) -> str:
    """``url`` with its password (``scheme://user:PASSWORD@``) and secret query values
    (``?password=``, ``&token=``) replaced by ``***``."""
    url = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", url)
    return _QUERY_SECRET.sub(
        lambda m: m.group(1) + REDACTED if is_secret_key(m.group(1)[1:-1]) else m.group(0), url)


def _redact_header_text(text: str) -> str:
    """A ``headers`` value given as text: a JSON or Python dict is redacted entry by entry;
    anything else that names a secret header is hidden whole."""
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, Mapping):
            return json.dumps(redact_mapping(value))
    return REDACTED if re.search(r"authorization|key|token|cookie|secret", text, re.I) else text


def _redact_value(key: Any, value: Any) -> Any:
    if is_secret_key(key):
        return REDACTED if _hides_something(value) else value
    if isinstance(value, str) and _HEADERS.match(str(key)):
        return _redact_header_text(value)
    return redact_value(value)


def redact_value(value: Any) -> Any:
    """``value`` with every secret inside it hidden: entries of secret keys in mappings (at any
    depth), URL passwords in strings."""
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def redact_mapping(args: Mapping[Any, Any]) -> dict[Any, Any]:
    """A copy of ``args`` (``model_args``, ``metadata``, headers) with secret values hidden."""
    return {k: _redact_value(k, v) for k, v in args.items()}


def _redact_kv_piece(piece: str) -> str:
    key, sep, value = piece.partition("=")
    if not sep:
        return redact_url(piece) if "://" in piece else piece
    if is_secret_key(key):
        plain = value.strip().lower() in ("", "true", "false", "none", "null")
        return piece if plain else f"{key}={REDACTED}"
    if _HEADERS.match(key.strip()):
        return f"{key}={_redact_header_text(value)}"
    return f"{key}={redact_url(value)}" if "://" in value else piece


def redact_model_args(model_args: Any) -> Any:
    """``model_args`` (or ``metadata``) with secret values shown as ``***``, in the form it came
    in: a mapping, a JSON object's text, or lm-eval's ``k=v,k2=v2`` text (split as
    ``parse_kv_args`` splits it: on commas and spaces). Text that looks like JSON but does not
    parse is hidden whole."""
    if isinstance(model_args, Mapping):
        return redact_mapping(model_args)
    if not isinstance(model_args, str):
        return model_args
    if model_args.lstrip().startswith("{"):
        try:
            parsed = json.loads(model_args)
        except (ValueError, RecursionError):
            return REDACTED
        return json.dumps(redact_value(parsed))
    return "".join(_redact_kv_piece(p) for p in _KV_SEPARATORS.split(model_args))


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the secrets of its arguments hidden (``--model_args
    api_key=sk-...``, ``--model_args={"api_key": ...}``), for what records it (W&B)."""
    out = []
    for arg in argv:
        flag, sep, value = arg.partition("=")
        if arg.startswith("-") and sep:
            out.append(f"{flag}={redact_model_args(value)}")
        else:
            out.append(redact_model_args(arg))
    return out


def redact_spec(spec: Any) -> Any:
    """Hide the secrets of an ``EvaluationSpec``'s ``model_args`` and ``metadata``, in place
    (a secret there is never needed by the coordinator: workers hold their own model_args);
    returns the spec. Text that does not parse is left for the spec's validation to refuse."""
    for name in ("model_args", "metadata"):
        text = getattr(spec, name)
        redacted = redact_model_args(text)
        if text and redacted != REDACTED:
            setattr(spec, name, redacted)
    return spec


def redact_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an lm-eval results document whose ``config.model_args`` and task configs'
    ``metadata`` (lm-eval merges model_args into it) hide their secrets."""
    doc = dict(results)
    if isinstance(doc.get("config"), Mapping) and "model_args" in doc["config"]:
        doc["config"] = {**doc["config"],
                         "model_args": redact_model_args(doc["config"]["model_args"])}
    if isinstance(doc.get("configs"), Mapping):
        doc["configs"] = {name: redact_mapping(cfg) if isinstance(cfg, Mapping) else cfg
                          for name, cfg in doc["configs"].items()}
    return doc
