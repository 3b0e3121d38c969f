"""The tokenizer a remote completions backend keeps beside the server, as lm-eval's
``TemplateAPI`` uses it: to split each (context, continuation) into tokens, to send token-id
prompts (``tokenized_requests``), and for the EOS stop string.

``huggingface``: ``AutoTokenizer`` with ``add_special_tokens = add_bos_token`` (False by
default: no BOS for API models, unlike ``hf``); ``tiktoken``: the model's OpenAI encoding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalfleet.inference.backends.api_args import ApiArgs
from evalfleet.inference.backends.base import BackendArgumentError
from evalfleet.inference.backends.fingerprint import (
    fingerprint,
    resolve_local_dir,
    tokenizer_files,
)
from evalfleet.inference.backends.loading import configure_pad_token
from evalfleet.inference.backends.pair_encoding import TemplateLMEncoding


class ApiTokenizer(TemplateLMEncoding):
    """lm-eval's ``TemplateAPI`` tokenization rules over a huggingface or tiktoken tokenizer."""

    def __init__(self, kind: str, tokenizer: Any, *, add_bos_token: bool,
                 custom_prefix_token_id: int | None, eos_string: str | None,
                 identity: str) -> None:
        self.kind = kind
        self.tok = tokenizer
        self.add_bos_token = add_bos_token
        self._custom_prefix = custom_prefix_token_id
        self._eos_string = eos_string
        self.identity = identity  # fingerprint of the tokenizer's files (or its name)

    # ------------------------------------------------------------------ special tokens
    @property
    def eot_token_id(self) -> int | None:
        return self.tok.eos_token_id if self.kind == "huggingface" else self.tok.eot_token

    @property
    def eos_string(self) -> str | None:
        """The stop string lm-eval appends to ``until`` (``eos_string`` model_arg first)."""
        if self._eos_string:
            return self._eos_string
        if self.kind == "huggingface":
            return self.tok.eos_token
        return self.tok.decode([self.tok.eot_token])

    @property
    def prefix_token_id(self) -> int:
        """Context of an empty-context request: custom, else BOS, else EOS (tiktoken: EOT)."""
        if self._custom_prefix is not None:
            return self._custom_prefix
        if self.kind == "huggingface":
            if self.tok.bos_token_id is not None:
                return self.tok.bos_token_id
            return self.tok.eos_token_id
        return self.tok.eot_token

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """``TemplateAPI.tok_encode``: hf ignores a False ``add_special_tokens`` in favour of
        ``add_bos_token``, exactly as lm-eval does."""
        if self.kind == "huggingface":
            special = add_special_tokens or self.add_bos_token
            return list(self.tok(text, add_special_tokens=special, truncation=False,
                                 return_attention_mask=False).input_ids)
        return list(self.tok.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        """``TemplateAPI.decode_batch`` for one sequence (special tokens kept)."""
        return self.tok.decode(list(ids))


def load_api_tokenizer(args: ApiArgs) -> ApiTokenizer | None:
    """The tokenizer ``args`` asks for; None for ``tokenizer_backend=none``."""
    if args.tokenizer_backend is None:
        return None
    if args.tokenizer_backend == "tiktoken":
        try:
            import tiktoken
        except ModuleNotFoundError as exc:
            raise BackendArgumentError(
                "tokenizer_backend", "tiktoken is not installed (pip install tiktoken), or "
                "give tokenizer=<path> with tokenizer_backend=huggingface") from exc
        try:
            tok = tiktoken.get_encoding(args.tokenizer) if args.tokenizer \
                else tiktoken.encoding_for_model(args.model)
        except (KeyError, ValueError, OSError) as exc:
            raise BackendArgumentError(
                "tokenizer_backend", f"no tiktoken encoding for model {args.model!r}: {exc}"
            ) from exc
        return ApiTokenizer("tiktoken", tok, add_bos_token=args.add_bos_token,
                            custom_prefix_token_id=args.custom_prefix_token_id,
                            eos_string=args.eos_string, identity=f"tiktoken:{tok.name}")
    import transformers

    name = args.tokenizer or args.model
    path = Path(name)
    if (path.is_absolute() or name.startswith(".")) and not path.exists():
        raise BackendArgumentError("tokenizer", f"no such tokenizer directory: {name}")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(
            name, trust_remote_code=args.trust_remote_code, revision=args.revision,
            use_fast=args.use_fast_tokenizer)
    except (OSError, ValueError) as exc:
        field = "tokenizer" if args.tokenizer else "model"
        raise BackendArgumentError(
            field, f"cannot load the tokenizer {name!r} ({exc}); give tokenizer=<local path or "
                   "hub id of the served model's tokenizer>, or tokenizer_backend=none for "
                   "generation only") from exc
    configure_pad_token(tok)
    local = resolve_local_dir(name, args.revision)
    files = tokenizer_files(local) if local is not None else []
    identity = fingerprint(files, f"tokenizer:{name}@{args.revision}") if files \
        else "sha256:" + hashlib.sha256(f"tokenizer:{name}@{args.revision}".encode()).hexdigest()
    return ApiTokenizer("huggingface", tok, add_bos_token=args.add_bos_token,
                        custom_prefix_token_id=args.custom_prefix_token_id,
                        eos_string=args.eos_string, identity=identity)
