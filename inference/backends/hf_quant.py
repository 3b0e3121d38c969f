"""lm-eval's bitsandbytes model_args for the hf backend, as transformers 5 takes them.

lm-eval 0.4.13 passes ``load_in_8bit``/``load_in_4bit`` and the ``BitsAndBytesConfig`` fields
(``bnb_4bit_compute_dtype`` made a torch dtype first) straight to ``from_pretrained``;
transformers 4 built a ``BitsAndBytesConfig`` from them, transformers 5 takes only
``quantization_config``. Here they are read and checked, and the config is built as
transformers 4 built it. Importing this module imports neither torch nor transformers, so the
embedded command can refuse a run whose prerequisites are missing before its worker starts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from packaging.version import Version

from evalfleet.inference.backends.arg_types import as_bool, as_choice, as_float, is_none
from evalfleet.inference.backends.base import BackendArgumentError

#: The extra that installs what quantized loading needs.
INSTALL_HINT = "pip install 'evalfleet[quant]'"
#: transformers 5's minimum (``BITSANDBYTES_MIN_VERSION``): older ones count as missing.
MIN_BITSANDBYTES = "0.46.1"
QUANT_FLAGS = ("load_in_8bit", "load_in_4bit")
_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "uint8")


def _dtype_name(name: str, v: Any) -> str:
    text = str(v).removeprefix("torch.")
    return as_choice(name, text, _DTYPES)


def _modules(name: str, v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(m, str) and m for m in v):
        return list(v)
    raise BackendArgumentError(name, f"expected a module name or a JSON list of them, got {v!r}")


#: ``BitsAndBytesConfig``'s fields besides the two flags, with their readers: the arguments
#: transformers 4 took from ``from_pretrained``'s keyword arguments (its signature's names).
BNB_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "llm_int8_threshold": as_float,
    "llm_int8_skip_modules": _modules,
    "llm_int8_enable_fp32_cpu_offload": as_bool,
    "llm_int8_has_fp16_weight": as_bool,
    "bnb_4bit_compute_dtype": _dtype_name,
    "bnb_4bit_quant_type": lambda n, v: as_choice(n, v, ("fp4", "nf4")),
    "bnb_4bit_use_double_quant": as_bool,
    "bnb_4bit_quant_storage": _dtype_name,
}


@dataclass(frozen=True)
class QuantArgs:
    """A bitsandbytes load: 8 or 4 bits, and the other ``BitsAndBytesConfig`` fields given
    (dtypes by name)."""

    bits: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def flag(self) -> str:
        """The model_args key that asked for it (``load_in_8bit`` or ``load_in_4bit``)."""
        return f"load_in_{self.bits}bit"

    def config_kwargs(self) -> dict[str, Any]:
        """``BitsAndBytesConfig``'s keyword arguments."""
        return {"load_in_8bit": self.bits == 8, "load_in_4bit": self.bits == 4, **self.options}


def pop_quant_args(args: dict[str, Any]) -> QuantArgs | None:
    """Take lm-eval's bitsandbytes arguments out of ``args`` (checked); None when neither flag
    is true. BackendArgumentError names a malformed or contradictory one."""
    flags = {f: as_bool(f, args.pop(f)) for f in QUANT_FLAGS if f in args and not is_none(args[f])}
    for f in QUANT_FLAGS:
        args.pop(f, None)
    options = {k: read(k, args.pop(k)) for k, read in BNB_FIELDS.items()
               if k in args and not is_none(args[k])}
    for k in BNB_FIELDS:
        args.pop(k, None)
    on = [f for f, v in flags.items() if v]
    if len(on) == 2:
        raise BackendArgumentError("load_in_4bit", "load_in_8bit and load_in_4bit are both "
                                                   "true: give one")
    if not on:
        if options:
            name = next(iter(options))
            raise BackendArgumentError(name, "applies only with load_in_8bit=True or "
                                             "load_in_4bit=True")
        return None
    if "quantization_config" in args:
        raise BackendArgumentError(on[0], "give either it or quantization_config, not both")
    return QuantArgs(8 if on[0] == "load_in_8bit" else 4, options)


def missing_package(quant: QuantArgs) -> BackendArgumentError | None:
    """Why the bitsandbytes package cannot serve ``quant`` here (absent or too old), or None."""
    want = MIN_BITSANDBYTES
    if importlib.util.find_spec("bitsandbytes") is None:
        return BackendArgumentError(
            quant.flag, f"needs the bitsandbytes package (>= {want}), which is not installed: "
                        f"{INSTALL_HINT}; bitsandbytes also needs a CUDA GPU")
    try:
        have = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return None
    if Version(have) < Version(MIN_BITSANDBYTES):
        return BackendArgumentError(
            quant.flag, f"needs bitsandbytes >= {want} (transformers' minimum), found {have}: "
                        f"{INSTALL_HINT}")
    return None


def check_prerequisites(quant: QuantArgs, *, device: str | None, cuda: bool) -> None:
    """BackendArgumentError naming what ``quant`` lacks here: the package, a CUDA GPU (``cuda``:
    whether torch sees one), or a device that is one (``device``: model_args' device)."""
    problem = missing_package(quant)
    if problem is not None:
        raise problem
    if not cuda:
        raise BackendArgumentError(
            quant.flag, "bitsandbytes quantization needs a CUDA GPU and torch sees none here; "
                        "run on a machine with one (or drop the flag)")
    if device is not None and not device.startswith("cuda"):
        raise BackendArgumentError(
            "device", f"{quant.flag} loads the model on a CUDA GPU; got device={device} (give "
                      "device=cuda or cuda:N, or leave it out)")


def bnb_config(quant: QuantArgs) -> Any:
    """The ``BitsAndBytesConfig`` transformers 4 built from these arguments."""
    import torch
    from transformers import BitsAndBytesConfig

    kwargs = quant.config_kwargs()
    for name in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
        if name in kwargs:
            kwargs[name] = getattr(torch, kwargs[name])
    return BitsAndBytesConfig(**kwargs)


def precheck(model_args: dict[str, Any]) -> None:
    """What the embedded command checks of hf model_args before its worker starts (no torch
    import, so a refusal comes at once): the bitsandbytes arguments, and the package a
    quantized load needs. The worker checks the rest (the GPU too) before any weights load."""
    quant = pop_quant_args(dict(model_args))
    problem = missing_package(quant) if quant is not None else None
    if problem is not None:
        raise problem
