"""A worker-side KV cache of shared prompt prefixes, kept across batches (LRU, byte budget).

Prefix sharing (:mod:`hf_score`) forwards a prefix shared by a batch's requests once per batch.
A long few-shot prompt shared by a whole job (truthfulqa_mc2's fixed six questions, an mmlu
subject's five shots) spans many batches; without this cache every batch recomputes it.

Entries are keyed by the token ids of a prefix (from the first position) and hold its KV as one
tensor ``[2 * layers, kv heads, positions, head dim]`` on the model's device. The KV of the
first ``n`` positions depends only on the first ``n`` tokens (causal attention), so an entry
serves any request whose input starts with any leading part of it.

Planning and running are separate (a batch is planned while the one before it computes), so an
entry is *reserved* when a plan decides to compute a prefix and *filled* when that plan runs; a
later plan may already reuse a reserved entry. A plan keeps references to the entries it reads,
so an eviction between planning and running never takes a tensor from under it; a plan whose
entry was never filled (its producing batch failed) is planned again (see ``Scorer.run``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(eq=False)
class PrefixEntry:
    """The KV of the prefix ``tokens`` (None until the batch that computes it has run)."""

    tokens: np.ndarray  # int64
    kv: torch.Tensor | None = None
    nbytes: int = 0
    dropped: bool = field(default=False, repr=False)

    @property
    def ready(self) -> bool:
        return self.kv is not None


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two int64 arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


class PrefixKVCache:
    """Recently computed shared prefixes, least recently used evicted beyond ``budget_bytes``.

    Thread safe: plans are made outside the model lock.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[bytes, PrefixEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0  # prefixes served from the cache
        self.reused_positions = 0  # positions those served (not computed)
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    @property
    def nbytes(self) -> int:
        """Bytes of the filled entries."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[PrefixEntry]:
        """Entries, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    # ---------------------------------------------------------------- planning
    def match(self, tokens: Sequence[int] | np.ndarray) -> tuple[PrefixEntry | None, int]:
        """The entry sharing the longest prefix with ``tokens``, and that length (0: none).

        Marks the entry as recently used."""
        if not self.enabled:
            return None, 0
        query = np.asarray(tokens, dtype=np.int64)
        best, best_len = None, 0
        with self._lock:
            for key, entry in self._entries.items():
                n = common_prefix(entry.tokens, query)
                if n > best_len:
                    best, best_len = (key, entry), n
            if best is None:
                return None, 0
            self._entries.move_to_end(best[0])
            return best[1], best_len

    def reserve(self, tokens: Sequence[int] | np.ndarray) -> PrefixEntry | None:
        """An entry for ``tokens``, to be filled when the plan that computes them runs.

        None when an entry already holds ``tokens`` (or a longer prefix starting with them)."""
        if not self.enabled:
            return None
        arr = np.asarray(tokens, dtype=np.int64)
        with self._lock:
            for key, entry in self._entries.items():
                if len(entry.tokens) >= len(arr) and common_prefix(entry.tokens, arr) == len(arr):
                    self._entries.move_to_end(key)
                    return None
            entry = PrefixEntry(arr)
            self._entries[arr.tobytes()] = entry
            return entry

    # ---------------------------------------------------------------- running
    def fill(self, entry: PrefixEntry, kv: torch.Tensor) -> None:
        """Store ``kv`` (``[2 * layers, heads, len(entry.tokens), dim]``) in ``entry``; drop
        entries it makes redundant (its own leading parts) and evict the least recently used
        beyond the budget. A plan holding an entry evicted while pending still reads it."""
        if entry.ready:
            return
        entry.kv = kv
        entry.nbytes = kv.numel() * kv.element_size()
        with self._lock:
            key = entry.tokens.tobytes()
            if entry.dropped or self._entries.get(key) is not entry:
                return
            self._bytes += entry.nbytes
            if entry.nbytes > self.budget_bytes:  # larger than the whole budget alone
                self._drop(key)
                self.evictions += 1
                return
            for other_key, other in list(self._entries.items()):
                if other is not entry and other.ready and len(other.tokens) < len(entry.tokens) \
                        and common_prefix(other.tokens, entry.tokens) == len(other.tokens):
                    self._drop(other_key)
            for other_key, other in list(self._entries.items()):
                if self._bytes <= self.budget_bytes:
                    break
                if other.ready and other is not entry:
                    self._drop(other_key)
                    self.evictions += 1

    def discard(self, entry: PrefixEntry) -> None:
        """Forget ``entry`` (its batch did not compute it)."""
        with self._lock:
            key = entry.tokens.tobytes()
            if self._entries.get(key) is entry:
                self._drop(key)

    def note_hit(self, positions: int) -> None:
        with self._lock:
            self.hits += 1
            self.reused_positions += positions

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        entry.dropped = True
        self._bytes -= entry.nbytes
