"""Validation of lm-eval ``HFLM`` model_args for the hf backend.

Known keys are type-checked (strings such as ``"true"``/``"1024"`` are accepted, as they come
from ``key=value`` strings); the others are left in ``extra``, for ``from_pretrained`` and the
model config as lm-eval passes them (``hf_model_kwargs`` refuses those neither takes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from evalfleet.inference.backends.arg_types import as_bool, as_int
from evalfleet.inference.backends.base import BackendArgumentError
from evalfleet.inference.backends.hf_quant import QuantArgs, pop_quant_args

_DTYPE_NAMES = ("auto",)
# Accepted by HFLM but meaningless or unsupported here: they must stay at these defaults.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "parallelize": False, "peft": None, "delta": None, "autogptq": False, "gptqmodel": False,
    "tp_plan": None, "max_memory_per_gpu": None, "max_cpu_memory": None,
}
_IGNORED = ("offload_folder", "logits_cache", "use_fast_tokenizer_warning")


@dataclass
class HFArgs:
    """Parsed model_args for :class:`~evalfleet.inference.backends.hf.HFBackend`."""

    pretrained: str
    revision: str = "main"
    subfolder: str = ""
    tokenizer: str | None = None
    backend: str = "default"
    truncation: bool = False
    max_length: int | None = None
    device: str | None = None
    dtype: str = "auto"
    softmax_dtype: str | None = None
    mixed_precision_dtype: str | None = None
    max_batch_size: int = 64
    trust_remote_code: bool = False
    use_fast_tokenizer: bool = True
    add_bos_token: bool | None = None
    prefix_token_id: int | None = None
    gguf_file: str | None = None
    think_end_token: str | int | None = None
    prefix_sharing: bool = True  # forward each shared token prefix once (False: lm-eval's way)
    # share an edge only if it saves this many positions: below, recomputing is cheaper than a
    # separate forward whose children could no longer be packed with their siblings
    min_shared_tokens: int = 32
    # what one more forward costs, in positions computed (None: by device, see hf_score):
    # rows are cut into forwards so that positions (padding included) plus this per forward
    # are least
    forward_cost: int | None = None
    # memory for the KV of shared prompt prefixes kept across batches (0: none kept)
    prefix_cache_mb: int = 256
    batch_size: int | str = 1
    # keyword arguments for the tokenizer's apply_chat_template (lm-eval's chat_template_args,
    # with enable_thinking merged in when given)
    chat_template_args: dict[str, Any] = field(default_factory=dict)
    # lm-eval's load_in_8bit / load_in_4bit / bnb_4bit_* (None: not quantized)
    quant: QuantArgs | None = None
    # the rest: from_pretrained's own arguments and the model config's attributes
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_auto(self) -> bool:
        """True for ``batch_size="auto"`` (or ``"auto:N"``)."""
        return isinstance(self.batch_size, str)


def _opt_bool(name: str, v: Any) -> bool | None:
    return None if v is None or (isinstance(v, str) and v.lower() in ("none", "null")) \
        else as_bool(name, v)


def _opt_int(name: str, v: Any, minimum: int | None = None) -> int | None:
    return None if v is None or (isinstance(v, str) and v.lower() in ("none", "null")) \
        else as_int(name, v, minimum)


def _str(name: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise BackendArgumentError(name, f"expected a non-empty string, got {v!r}")
    return v


def _opt_str(name: str, v: Any) -> str | None:
    return None if v is None else _str(name, v)


def _dtype(name: str, v: Any, allow_auto: bool) -> str | None:
    if v is None:
        return None
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, str):
        v = v.removeprefix("torch.")
        if allow_auto and v == "auto":
            return v
        if isinstance(getattr(torch, v, None), torch.dtype):
            return v
    raise BackendArgumentError(name, f"not a torch dtype: {v!r} (e.g. float32, bfloat16"
                               f"{', auto' if allow_auto else ''})")


def parse_batch_size(v: Any) -> int | str:
    """``1``, ``"8"``, ``"auto"`` or ``"auto:N"``."""
    if isinstance(v, str) and v.startswith("auto"):
        _, _, sched = v.partition(":")
        if sched:
            try:
                float(sched)
            except ValueError:
                raise BackendArgumentError("batch_size", f"bad auto schedule in {v!r}") from None
        return v
    return as_int("batch_size", v, minimum=1)


def parse_hf_args(model_args: dict[str, Any], batch_size: int | str = 1) -> HFArgs:
    """Validate ``model_args``; raises BackendArgumentError naming the offending field."""
    a = dict(model_args)
    if "pretrained" not in a:
        raise BackendArgumentError("pretrained", "required (a model directory or hub id)")
    for key, default in _UNSUPPORTED_DEFAULTS.items():
        if key in a and a.pop(key) not in (default, str(default), None, "None", "none"):
            raise BackendArgumentError(key, "not supported by the evalfleet hf backend")
    for key in _IGNORED:
        a.pop(key, None)
    out = HFArgs(pretrained=_str("pretrained", a.pop("pretrained")))
    if "revision" in a:
        out.revision = str(a.pop("revision") or "main")
    out.subfolder = str(a.pop("subfolder", "") or "")
    out.tokenizer = _opt_str("tokenizer", a.pop("tokenizer", None))
    out.backend = str(a.pop("backend", "default"))
    if out.backend not in ("default", "causal"):
        raise BackendArgumentError("backend", f"only causal models are supported, got "
                                              f"{out.backend!r}")
    out.truncation = as_bool("truncation", a.pop("truncation", False))
    out.max_length = _opt_int("max_length", a.pop("max_length", None), minimum=1)
    device = _opt_str("device", a.pop("device", None))
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, ValueError):
            raise BackendArgumentError("device", f"not a torch device: {device!r}") from None
    out.device = device
    out.dtype = _dtype("dtype", a.pop("dtype", "auto"), allow_auto=True) or "auto"
    out.softmax_dtype = _dtype("softmax_dtype", a.pop("softmax_dtype", None), allow_auto=False)
    out.mixed_precision_dtype = _dtype(
        "mixed_precision_dtype", a.pop("mixed_precision_dtype", None), allow_auto=False)
    out.max_batch_size = as_int("max_batch_size", a.pop("max_batch_size", 64), minimum=1)
    out.trust_remote_code = as_bool("trust_remote_code", a.pop("trust_remote_code", False))
    out.use_fast_tokenizer = as_bool("use_fast_tokenizer", a.pop("use_fast_tokenizer", True))
    out.add_bos_token = _opt_bool("add_bos_token", a.pop("add_bos_token", None))
    out.prefix_token_id = _opt_int("prefix_token_id", a.pop("prefix_token_id", None), minimum=0)
    out.gguf_file = _opt_str("gguf_file", a.pop("gguf_file", None))
    think = a.pop("think_end_token", None)
    if isinstance(think, str) and think.isdigit():
        think = int(think)
    if think is not None and not isinstance(think, (str, int)):
        raise BackendArgumentError("think_end_token", f"expected a string or token id, "
                                                      f"got {think!r}")
    out.think_end_token = think
    template_args = a.pop("chat_template_args", None) or {}
    if isinstance(template_args, str):
        import json

        try:
            template_args = json.loads(template_args)
        except json.JSONDecodeError:
            template_args = None
    if not isinstance(template_args, dict):
        raise BackendArgumentError("chat_template_args", "expected a JSON object of keyword "
                                   "arguments for the chat template")
    enable_thinking = _opt_bool("enable_thinking", a.pop("enable_thinking", None))
    if enable_thinking is not None:
        if enable_thinking and think is None:
            raise BackendArgumentError("enable_thinking", "needs think_end_token (the token "
                                       "that ends the model's thinking), as lm-eval requires")
        template_args = {**template_args, "enable_thinking": enable_thinking}
    out.chat_template_args = template_args
    out.prefix_sharing = as_bool("prefix_sharing", a.pop("prefix_sharing", HFArgs.prefix_sharing))
    out.min_shared_tokens = as_int("min_shared_tokens",
                                 a.pop("min_shared_tokens", HFArgs.min_shared_tokens), minimum=1)
    if "forward_cost" in a:
        out.forward_cost = as_int("forward_cost", a.pop("forward_cost"), minimum=0)
    out.prefix_cache_mb = as_int("prefix_cache_mb",
                                 a.pop("prefix_cache_mb", HFArgs.prefix_cache_mb), minimum=0)
    out.batch_size = parse_batch_size(a.pop("batch_size", batch_size))
    out.quant = pop_quant_args(a)
    out.extra = a
    return out
