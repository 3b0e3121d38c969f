"""A provider's prompt cache as the stand-ins report it, and their own usage totals.

``PromptCache(block)``: a prompt's leading tokens, in whole blocks of ``block`` tokens, that an
earlier prompt began with are "read from the cache" (OpenAI caches prompt prefixes in blocks
automatically; Anthropic reads what a cache breakpoint wrote). Every prompt's blocks are
remembered. ``block`` 0: no cache. ``UsageTotals`` sums what the server reported in its
answers (200s only), for ``GET /admin/stats``. ``token_counter`` counts tokens for stand-ins
that answer without a model.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class PromptCache:
    """Prefixes seen, in blocks of ``block`` tokens."""

    def __init__(self, block: int) -> None:
        self.block = block
        self.seen: set[bytes] = set()
        self.lock = threading.Lock()

    def cached(self, ids: Sequence[int]) -> int:
        """Leading tokens of ``ids`` read from the cache (a multiple of ``block``, never the
        whole prompt); then the prompt's blocks are remembered."""
        if self.block <= 0:
            return 0
        keys = []
        digest = hashlib.sha256()
        for end in range(self.block, len(ids), self.block):
            digest.update(b"".join(int(t).to_bytes(4, "little") for t in ids[end - self.block:end]))
            keys.append(digest.copy().digest())
        with self.lock:
            hits = 0
            for key in keys:
                if key not in self.seen:
                    break
                hits += 1
            self.seen.update(keys)
        return hits * self.block


_KEYS = ("responses", "prompt_tokens", "cached_tokens", "completion_tokens")


class UsageTotals:
    """Tokens the server reported, summed over its answers, in all and by request kind
    (``"echo"``: prompt scoring, ``"generate"``: generation)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.totals: dict[str, dict[str, int]] = {}

    def add(self, kind: str, prompt: int, cached: int, completion: int) -> None:
        with self.lock:
            for key in ("all", kind):
                counts = self.totals.setdefault(key, dict.fromkeys(_KEYS, 0))
                for name, n in zip(_KEYS, (1, prompt, cached, completion), strict=True):
                    counts[name] += n

    def as_dict(self) -> dict[str, Any]:
        """``{"responses", "prompt_tokens", "cached_tokens", "completion_tokens", "echo":
        {...}, "generate": {...}}`` (a kind's dict absent until it was asked)."""
        with self.lock:
            out: dict[str, Any] = dict(self.totals.get("all", dict.fromkeys(_KEYS, 0)))
            out.update({k: dict(v) for k, v in self.totals.items() if k != "all"})
            return out


def token_counter(model_dir: str) -> Callable[[str], int] | None:
    """Counts a text's tokens with ``model_dir``'s ``tokenizer.json`` (the fast ``tokenizers``
    library: no torch, no model), for stand-ins that answer without a model; None without one."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
