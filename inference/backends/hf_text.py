"""Tokenization exactly as lm-eval's HFLM / TemplateLM does it (causal models)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from evalfleet.inference.backends.pair_encoding import TemplateLMEncoding


@dataclass(frozen=True)
class ScoreRequest:
    """One scoring job in tokens: ``seq`` = (context + continuation) after left truncation.

    The model input is ``seq[:-1]``; the last ``contlen`` positions of it are scored, each
    against the following token of ``seq``.
    """

    seq: tuple[int, ...]
    contlen: int
    sort_key: tuple[int, ...]  # untruncated context + continuation (lm-eval's sort order)

    @property
    def n_inputs(self) -> int:
        return len(self.seq) - 1

    @property
    def first_scored(self) -> int:
        return self.n_inputs - self.contlen


def has_bos_prefix(text: str, bos: str | None) -> bool:
    """lm-eval's ``has_bos_prefix`` for a single string."""
    return bos is not None and text.startswith(bos)


class HFTokenizer(TemplateLMEncoding):
    """Wraps a transformers tokenizer with lm-eval's special-token rules."""

    def __init__(self, tokenizer, *, add_bos_token: bool | None,
                 prefix_token_id: int | None) -> None:
        self.tok = tokenizer
        self.add_bos_token = add_bos_token
        self._custom_prefix = prefix_token_id
        self._prefix_text = tokenizer.decode(self.prefix_token_id)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Custom prefix token, else BOS, else EOS (``HFLM.prefix_token_id``)."""
        if self._custom_prefix is not None:
            return self._custom_prefix
        if self.tok.bos_token_id is not None:
            return self.tok.bos_token_id
        return self.tok.eos_token_id

    def _special_kwargs(self, add_special_tokens: bool | None) -> dict[str, bool]:
        if add_special_tokens is not None:
            return {"add_special_tokens": add_special_tokens}
        if self.add_bos_token is not None:
            return {"add_special_tokens": self.add_bos_token}
        return {}

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """``HFLM.tok_encode``: tokenizer default, no BOS when the text already starts with it."""
        kwargs = self._special_kwargs(add_special_tokens)
        if add_special_tokens is None and has_bos_prefix(text, self._prefix_text):
            kwargs["add_special_tokens"] = False
        return list(self.tok.encode(text, **kwargs))

    def encode_many(self, texts: Sequence[str],
                    add_special_tokens: bool | None = None) -> list[list[int]]:
        """``encode`` of every text: each distinct text once, one tokenizer call per rule."""
        distinct = list(dict.fromkeys(texts))
        by_kwargs: dict[tuple, list[str]] = {}
        for text in distinct:
            kwargs = self._special_kwargs(add_special_tokens)
            if add_special_tokens is None and has_bos_prefix(text, self._prefix_text):
                kwargs["add_special_tokens"] = False
            by_kwargs.setdefault(tuple(sorted(kwargs.items())), []).append(text)
        ids: dict[str, list[int]] = {}
        for key, group in by_kwargs.items():
            encoded = self.tok(group, **dict(key))["input_ids"]
            ids.update(zip(group, (list(e) for e in encoded), strict=True))
        return [ids[t] for t in texts]

    def encode_requests(self, pairs: Sequence[tuple[str, str]]
                        ) -> list[tuple[list[int], list[int]]]:
        """``encode_request`` of every (context, continuation) pair, batched."""
        wholes: list[str] = []
        contexts: list[str] = []
        for context, continuation in pairs:
            if context == "":
                continue
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces > 0:
                continuation = context[-n_spaces:] + continuation
                context = context[:-n_spaces]
            wholes.append(context + continuation)
            contexts.append(context)
        encoded = self.encode_many(wholes + contexts)
        whole_ids, ctx_ids = iter(encoded[: len(wholes)]), iter(encoded[len(wholes):])
        out = []
        for context, continuation in pairs:
            if context == "":
                out.append(self.encode_request(context, continuation))
                continue
            whole, ctx = next(whole_ids), next(ctx_ids)
            out.append((ctx, whole[len(ctx):]))
        return out

    def batch_encode_left(self, texts: Sequence[str],
                          left_truncate_len: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``HFLM.tok_batch_encode``: left-padded ids and attention mask, left-truncated."""
        kwargs: dict[str, bool] = {}
        if has_bos_prefix(texts[0], self.tok.bos_token):
            kwargs = {"add_special_tokens": False}
        elif self.add_bos_token is not None:
            kwargs = {"add_special_tokens": self.add_bos_token}
        old_side = self.tok.padding_side
        self.tok.padding_side = "left"
        try:
            enc = self.tok(list(texts), padding="longest", return_tensors="pt", **kwargs)
        finally:
            self.tok.padding_side = old_side
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if left_truncate_len:
            ids, mask = ids[:, -left_truncate_len:], mask[:, -left_truncate_len:]
        return ids, mask

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def make_score_request(ctx: list[int], cont: list[int], max_length: int) -> ScoreRequest:
    """Left-truncate ``ctx + cont`` to ``max_length + 1`` tokens as HFLM does."""
    if not ctx:
        raise ValueError("context encodes to no tokens")
    if not cont:
        raise ValueError("continuation encodes to no tokens")
    if len(cont) > max_length:
        raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length {max_length}")
    full = ctx + cont
    return ScoreRequest(seq=tuple(full[-(max_length + 1):]), contlen=len(cont),
                        sort_key=tuple(full))
