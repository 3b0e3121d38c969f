"""What every backend does as it loads: report the installed library versions, and give its
tokenizer a pad token by lm-eval's rule."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``names`` (missing ones left out)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def configure_pad_token(tokenizer: Any) -> None:
    """lm-eval's ``configure_pad_token``: pad = pad, else unk, else eos, else a new ``<|pad|>``
    (API models call it too, "to mirror HFLM")."""
    if tokenizer.pad_token_id is not None or tokenizer.pad_token:
        return
    if tokenizer.unk_token:
        tokenizer.pad_token_id = tokenizer.unk_token_id
    elif tokenizer.eos_token:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
