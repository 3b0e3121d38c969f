"""Where the hf backend's other model_args go, and which are refused.

lm-eval's ``HFLM`` passes every keyword it does not know to ``from_pretrained``, which takes
its own loading arguments and sets the model config's attributes from the rest; anything else
fails there, after the config is read. Here the same split is made before any weights load:
``from_pretrained``'s own arguments go to it, the config's attributes are set on the config, and
any other key is refused with its closest accepted names (``dtyp`` -> ``dtype``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evalfleet.inference.backends.arg_types import reject_unknown
from evalfleet.inference.backends.hf_quant import BNB_FIELDS, QUANT_FLAGS

#: lm-eval 0.4.13 ``HFLM.__init__``'s parameters (``parse_hf_args`` reads each of them).
HFLM_ARGS = (
    "pretrained", "backend", "revision", "subfolder", "tokenizer", "truncation", "logits_cache",
    "max_length", "device", "dtype", "softmax_dtype", "mixed_precision_dtype", "batch_size",
    "max_batch_size", "trust_remote_code", "use_fast_tokenizer", "add_bos_token",
    "prefix_token_id", "parallelize", "max_memory_per_gpu", "max_cpu_memory", "offload_folder",
    "tp_plan", "peft", "delta", "autogptq", "gptqmodel", "gguf_file", "think_end_token",
    "enable_thinking", "chat_template_args", "use_fast_tokenizer_warning",
)
#: evalfleet's own hf knobs (README: prefix sharing and the prefix cache).
EVALFLEET_ARGS = ("prefix_sharing", "min_shared_tokens", "forward_cost", "prefix_cache_mb")
#: transformers 5 ``PreTrainedModel.from_pretrained``'s loading arguments that can be written
#: in model_args (those HFLM sets itself, and those taking Python objects, are left out).
FROM_PRETRAINED_KWARGS = (
    "cache_dir", "ignore_mismatched_sizes", "force_download", "local_files_only", "token",
    "use_safetensors", "weights_only", "disable_mmap", "torch_dtype", "device_map",
    "max_memory", "offload_buffers", "quantization_config", "variant", "adapter_kwargs",
    "adapter_name", "tp_size", "use_kernels", "key_mapping", "low_cpu_mem_usage",
    "offload_state_dict", "attn_implementation", "experts_implementation", "code_revision",
)


def split_extra(extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``from_pretrained``'s own arguments, the rest: candidate config attributes)."""
    loading = {k: v for k, v in extra.items() if k in FROM_PRETRAINED_KWARGS}
    return loading, {k: v for k, v in extra.items() if k not in loading}


def reject_unused(unused: Iterable[str], config_keys: Iterable[str]) -> None:
    """BackendArgumentError for the first key that neither the backend, ``from_pretrained`` nor
    the model's config (``config_keys``: its attributes) took, with its closest accepted name."""
    args = dict.fromkeys(unused)
    if args:
        reject_unknown(
            "hf", args, (*HFLM_ARGS, *EVALFLEET_ARGS, *QUANT_FLAGS, *BNB_FIELDS),
            also=(*FROM_PRETRAINED_KWARGS, *config_keys),
            also_named="from_pretrained's arguments and the model config's attributes")
