"""model_args of the ``vllm`` backend (lm-eval's ``VLLM`` arguments), validated without
importing vllm, so a bad argument is INVALID_ARGUMENT on any machine.

Names and defaults are lm-eval 0.4.13's (``lm_eval/models/vllm_causallms.py``). Arguments lm-eval
forwards to ``vllm.LLM`` (``gpu_memory_utilization``, ``enforce_eager``, ``max_num_seqs``,
``enable_prefix_caching``, ...) are forwarded here too, type-checked when known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evalfleet.inference.backends.arg_types import (
    as_bool,
    as_choice,
    as_dict,
    as_float,
    as_int,
    as_str,
    is_none,
    opt,
)
from evalfleet.inference.backends.base import BackendArgumentError

DTYPES = ("auto", "float16", "bfloat16", "float32", "half", "float")
#: Engine arguments forwarded to vllm.LLM with their readers.
_ENGINE_TYPED = {
    "gpu_memory_utilization": lambda n, v: as_float(n, v, 0.01, 1.0),
    "enforce_eager": as_bool,
    "max_num_seqs": lambda n, v: as_int(n, v, 1),
    "max_num_batched_tokens": lambda n, v: as_int(n, v, 1),
    "enable_prefix_caching": as_bool,
    "enable_chunked_prefill": as_bool,
    "max_logprobs": lambda n, v: as_int(n, v, 1),
    "cpu_offload_gb": lambda n, v: as_float(n, v, 0.0),
    "kv_cache_dtype": as_str,
    "distributed_executor_backend": as_str,
    "pipeline_parallel_size": lambda n, v: as_int(n, v, 1),
    "download_dir": as_str,
    "load_format": as_str,
    "logprobs_mode": as_str,
}
_IGNORED = ("device", "swap_space")


@dataclass
class VLLMArgs:
    """Parsed model_args of :class:`~evalfleet.inference.backends.vllm.VLLMBackend`."""

    pretrained: str
    dtype: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    tokenizer: str | None = None
    tokenizer_mode: str = "auto"
    tokenizer_revision: str | None = None
    add_bos_token: bool | None = None
    prefix_token_id: int | None = None
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    quantization: str | None = None
    batch_size: int | str = "auto"
    max_batch_size: int | None = None
    max_length: int | None = None  # max_length or max_model_len
    seed: int = 1234
    think_end_token: str | None = None
    enable_thinking: bool | None = None
    chat_template_args: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)

    def llm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``vllm.LLM`` (lm-eval's ``VLLM.model_args``)."""
        return {
            "model": self.pretrained, "revision": self.revision, "dtype": self.dtype,
            "tokenizer": self.tokenizer, "tokenizer_mode": self.tokenizer_mode,
            "tokenizer_revision": self.tokenizer_revision,
            "trust_remote_code": self.trust_remote_code,
            "tensor_parallel_size": self.tensor_parallel_size,
            "max_model_len": self.max_length,
            "max_num_seqs": self.engine.get("max_num_seqs", self.max_batch_size),
            "quantization": self.quantization, "seed": self.seed,
            **{k: v for k, v in self.engine.items() if k != "max_num_seqs"},
        }


def parse_vllm_args(model_args: dict[str, Any], batch_size: int | str = "auto") -> VLLMArgs:
    """Validate ``model_args``; BackendArgumentError names the field."""
    a = dict(model_args)
    if "pretrained" not in a:
        raise BackendArgumentError("pretrained", "required (a model directory or hub id)")
    out = VLLMArgs(pretrained=as_str("pretrained", a.pop("pretrained")))
    dtype = str(a.pop("dtype", "auto")).removeprefix("torch.")
    out.dtype = as_choice("dtype", dtype, DTYPES)
    out.revision = opt(as_str, "revision", a.pop("revision", None))
    out.trust_remote_code = as_bool("trust_remote_code", a.pop("trust_remote_code", False))
    out.tokenizer = opt(as_str, "tokenizer", a.pop("tokenizer", None))
    out.tokenizer_mode = as_choice("tokenizer_mode", a.pop("tokenizer_mode", "auto"),
                                   ("auto", "slow", "mistral", "custom"))
    out.tokenizer_revision = opt(as_str, "tokenizer_revision", a.pop("tokenizer_revision", None))
    out.add_bos_token = opt(as_bool, "add_bos_token", a.pop("add_bos_token", None))
    out.prefix_token_id = opt(as_int, "prefix_token_id", a.pop("prefix_token_id", None), 0)
    out.tensor_parallel_size = as_int("tensor_parallel_size",
                                      a.pop("tensor_parallel_size", 1), 1)
    out.data_parallel_size = as_int("data_parallel_size", a.pop("data_parallel_size", 1), 1)
    out.quantization = opt(as_str, "quantization", a.pop("quantization", None))
    max_gen_toks = as_int("max_gen_toks", a.pop("max_gen_toks", 256), 1)
    if max_gen_toks != 256:
        raise BackendArgumentError(
            "max_gen_toks", "set the generation budget per job with --gen_kwargs max_gen_toks=N "
                            "(the coordinator sends it with each request)")
    bs = a.pop("batch_size", batch_size)
    out.batch_size = "auto" if isinstance(bs, str) and "auto" in bs \
        else as_int("batch_size", bs, 1)
    out.max_batch_size = opt(as_int, "max_batch_size", a.pop("max_batch_size", None), 1)
    max_length = opt(as_int, "max_length", a.pop("max_length", None), 2)
    max_model_len = opt(as_int, "max_model_len", a.pop("max_model_len", None), 2)
    if max_length is not None and max_model_len is not None:
        raise BackendArgumentError("max_model_len", "give max_length or max_model_len, not both")
    out.max_length = max_model_len if max_model_len is not None else max_length
    out.seed = as_int("seed", a.pop("seed", 1234))
    out.think_end_token = opt(as_str, "think_end_token", a.pop("think_end_token", None))
    template_args = a.pop("chat_template_args", None)
    out.chat_template_args = {} if is_none(template_args) \
        else as_dict("chat_template_args", template_args)
    out.enable_thinking = opt(as_bool, "enable_thinking", a.pop("enable_thinking", None))
    if out.enable_thinking and out.think_end_token is None:
        raise BackendArgumentError("enable_thinking", "needs think_end_token (the token that "
                                   "ends the model's thinking), as lm-eval requires")
    side = a.pop("truncation_side", "left")
    if side != "left":
        raise BackendArgumentError("truncation_side", f"only 'left' is supported, got {side!r}")
    if a.pop("lora_local_path", None) is not None:
        raise BackendArgumentError("lora_local_path", "LoRA adapters are not supported by "
                                                      "evalfleet's vllm backend")
    a.pop("max_lora_rank", None)
    for key in _IGNORED:
        a.pop(key, None)
    for key, reader in _ENGINE_TYPED.items():
        if key in a:
            out.engine[key] = reader(key, a.pop(key))
    out.engine.update(a)  # anything else goes to vllm.LLM, as lm-eval forwards it
    return out
