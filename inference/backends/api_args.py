"""model_args of the remote API backends (lm-eval's ``TemplateAPI`` arguments), validated.

Names and defaults are lm-eval 0.4.13's (``lm_eval/models/api_models.py``), plus ``api_key``
(else the provider's environment variable) and ``probe_interval_s`` (how old the logprob probe
may be before a loglikelihood job re-runs it) and ``batch_api`` (send batches through the
provider's batch API: SubmitBatch/PollBatch). Unknown keys are refused with close matches
(lm-eval silently swallows them, so ``max_tokens=512`` would do nothing there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from evalfleet.inference.backends.arg_types import (
    as_bool,
    as_choice,
    as_dict,
    as_float,
    as_int,
    as_str,
    opt,
    reject_unknown,
)
from evalfleet.inference.backends.base import BackendArgumentError

TOKENIZER_BACKENDS = ("huggingface", "tiktoken", "none")
#: Endpoint suffixes lm-eval takes in base_url; the official clients want the API root.
_ENDPOINT_SUFFIXES = ("/chat/completions", "/completions", "/messages")

_KNOWN = (
    "model", "pretrained", "base_url", "api_key", "tokenizer", "tokenizer_backend",
    "tokenized_requests", "num_concurrent", "max_retries", "timeout", "max_length",
    "max_gen_toks", "batch_size", "seed", "add_bos_token", "custom_prefix_token_id",
    "eos_string", "trust_remote_code", "revision", "use_fast_tokenizer", "verify_certificate",
    "ca_cert_path", "header", "truncate", "think_end_token", "probe_interval_s", "max_images",
    "enable_thinking", "adaptive_concurrency", "batch_api",
)


@dataclass
class ApiArgs:
    """Parsed model_args of a remote API backend."""

    model: str
    base_url: str  # the API root, e.g. http://host:8000/v1
    api_key: str | None = None
    tokenizer: str | None = None
    tokenizer_backend: str | None = "huggingface"  # None: no tokenizer
    tokenized_requests: bool = True
    num_concurrent: int = 1
    adaptive_concurrency: bool = True  # num_concurrent is a ceiling (inference/.../concurrency)
    max_retries: int = 3
    timeout: float = 300.0
    max_length: int = 2048
    max_gen_toks: int = 256
    batch_size: int = 1
    seed: int = 1234
    add_bos_token: bool = False
    custom_prefix_token_id: int | None = None
    eos_string: str | None = None
    trust_remote_code: bool = False
    revision: str = "main"
    use_fast_tokenizer: bool = True
    verify_certificate: bool = True
    ca_cert_path: str | None = None
    header: dict[str, str] = field(default_factory=dict)
    think_end_token: str | None = None
    # the chat template's enable_thinking (sent as chat_template_kwargs; None: not sent)
    enable_thinking: bool | None = None
    probe_interval_s: float = 600.0
    # answer SubmitBatch/PollBatch through the provider's batch API (inference/.../*_batch.py)
    batch_api: bool = False

    @property
    def max_tokens_in_window(self) -> int:
        """lm-eval's ``TemplateAPI.max_length``: ``max_length - 1`` (one token is generated)."""
        return self.max_length - 1

    @property
    def verify(self) -> bool | str:
        """What the HTTP client verifies the server's certificate against."""
        if self.verify_certificate and self.ca_cert_path:
            return self.ca_cert_path
        return self.verify_certificate


def api_root(base_url: str, field_name: str = "base_url") -> str:
    """The API root the official clients take, from either form users give.

    ``http://host:8000/v1`` (vLLM's, LM Studio's and the openai client's form) stays as is;
    ``http://host:8000/v1/completions`` or ``.../v1/chat/completions`` (lm-eval's form) and
    ``.../v1/messages`` lose the endpoint. Query strings and fragments are refused.
    """
    text = base_url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BackendArgumentError(
            field_name, f"expected an http(s) URL such as http://127.0.0.1:8000/v1, got "
                        f"{base_url!r}")
    if parts.query or parts.fragment:
        raise BackendArgumentError(field_name, f"must not carry a query or fragment: "
                                               f"{base_url!r}")
    path = parts.path.rstrip("/")
    for suffix in _ENDPOINT_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urlunsplit((parts.scheme, parts.netloc.lower(), path, "", ""))


def parse_api_args(backend: str, model_args: dict[str, Any], *, batch_size: int | str = 1,
                   default_base_url: str | None = None,
                   default_tokenizer_backend: str | None = "huggingface",
                   api_key_env: str = "OPENAI_API_KEY",
                   tokenized_default: bool = True) -> ApiArgs:
    """Validate ``model_args`` for ``backend``; BackendArgumentError names the field."""
    a = dict(model_args)
    reject_unknown(backend, a, _KNOWN)
    model = a.pop("model", None) or a.pop("pretrained", None)
    a.pop("pretrained", None)
    if not model:
        raise BackendArgumentError("model", "required: the model name the server serves "
                                            "(e.g. model=HuggingFaceTB/SmolLM2-135M-Instruct)")
    base_url = a.pop("base_url", None) or default_base_url
    if not base_url:
        raise BackendArgumentError(
            "base_url", "required: the server's API root, e.g. base_url=http://127.0.0.1:8000/v1"
                        " (or the endpoint, .../v1/completions)")
    out = ApiArgs(model=as_str("model", str(model)), base_url=api_root(as_str("base_url",
                                                                             base_url)))
    key = a.pop("api_key", None)
    out.api_key = str(key) if key is not None else os.environ.get(api_key_env)
    out.tokenizer = opt(as_str, "tokenizer", a.pop("tokenizer", None))
    tb = a.pop("tokenizer_backend", default_tokenizer_backend)
    if tb is None or (isinstance(tb, str) and tb.lower() in ("none", "null")):
        out.tokenizer_backend = None
    else:
        tb = "huggingface" if tb == "auto" else tb
        if tb == "remote":
            raise BackendArgumentError(
                "tokenizer_backend", "remote tokenizers (vLLM's /tokenize endpoint) are not "
                "supported; give tokenizer=<local path or hub id of the served model's "
                "tokenizer> with tokenizer_backend=huggingface")
        out.tokenizer_backend = as_choice("tokenizer_backend", tb, TOKENIZER_BACKENDS)
        if out.tokenizer_backend == "none":
            out.tokenizer_backend = None
    tokenized = a.pop("tokenized_requests", None)
    out.tokenized_requests = tokenized_default if tokenized is None \
        else as_bool("tokenized_requests", tokenized)
    if out.tokenizer_backend is None:
        out.tokenized_requests = False  # lm-eval: no tokenizer, no token-id prompts
    out.num_concurrent = max(1, as_int("num_concurrent", a.pop("num_concurrent", 1)))
    out.adaptive_concurrency = as_bool("adaptive_concurrency",
                                       a.pop("adaptive_concurrency", True))
    out.max_retries = as_int("max_retries", a.pop("max_retries", 3), minimum=1)
    out.timeout = as_float("timeout", a.pop("timeout", 300), minimum=0.001)
    out.max_length = as_int("max_length", a.pop("max_length", 2048), minimum=3)
    out.max_gen_toks = as_int("max_gen_toks", a.pop("max_gen_toks", 256), minimum=1)
    out.batch_size = _batch_size(a.pop("batch_size", batch_size))
    out.seed = as_int("seed", a.pop("seed", 1234))
    out.add_bos_token = as_bool("add_bos_token", a.pop("add_bos_token", False))
    out.custom_prefix_token_id = opt(as_int, "custom_prefix_token_id",
                                     a.pop("custom_prefix_token_id", None), 0)
    out.eos_string = opt(as_str, "eos_string", a.pop("eos_string", None))
    out.trust_remote_code = as_bool("trust_remote_code", a.pop("trust_remote_code", False))
    out.revision = str(a.pop("revision", "main") or "main")
    out.use_fast_tokenizer = as_bool("use_fast_tokenizer", a.pop("use_fast_tokenizer", True))
    out.verify_certificate = as_bool("verify_certificate", a.pop("verify_certificate", True))
    out.ca_cert_path = opt(as_str, "ca_cert_path", a.pop("ca_cert_path", None))
    header = a.pop("header", None)
    out.header = {str(k): str(v) for k, v in as_dict("header", header).items()} \
        if header is not None else {}
    out.think_end_token = opt(as_str, "think_end_token", a.pop("think_end_token", None))
    out.enable_thinking = opt(as_bool, "enable_thinking", a.pop("enable_thinking", None))
    out.probe_interval_s = as_float("probe_interval_s", a.pop("probe_interval_s", 600),
                                    minimum=0)
    out.batch_api = as_bool("batch_api", a.pop("batch_api", False))
    a.pop("truncate", None)  # accepted and unused, as in lm-eval
    max_images = a.pop("max_images", 1)
    if as_int("max_images", max_images) != 1:
        raise BackendArgumentError("max_images", "multimodal requests are not supported")
    return out


def _batch_size(v: Any) -> int:
    """Prompts per HTTP request; ``auto`` is 1, as lm-eval's API models take it."""
    if isinstance(v, str) and v.startswith("auto"):
        return 1
    return as_int("batch_size", v, minimum=1)
