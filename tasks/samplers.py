"""Few-shot samplers with lm-eval's exact draw semantics (CPython ``random.Random``)."""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import Any

Doc = dict[str, Any]


def _without(doc: Doc, pool: Sequence[Doc], n: int | None = None) -> list[Doc]:
    kept = [x for x in pool if x != doc]
    return kept if n is None else kept[:n]


class DefaultSampler:
    """``rnd.sample(pool, n)``; with an eval doc, draw n+1 and drop copies of it."""

    def __init__(self, pool: Sequence[Doc], seed: int | None, indices: list[int] | None = None):
        self.pool = [pool[i] for i in indices] if indices else list(pool)
        self.rnd = Random(seed)

    def sample(self, n: int, eval_doc: Doc | None = None) -> list[Doc]:
        """Draw ``n`` shots (consumes the shared RNG exactly as lm-eval does)."""
        if n == 0:
            return []
        if not self.pool:
            raise ValueError("no documents available for few-shot sampling")
        if not eval_doc:
            res = self.rnd.sample(self.pool, n)
        else:
            res = _without(eval_doc, self.rnd.sample(self.pool, n + 1), n)
        if len(res) < n:
            res = self.rnd.sample([x for x in self.pool if x != eval_doc], n)
        return res


class FirstNSampler:
    """The first ``n`` pool docs in order (eval doc removed); ``fewshot_indices`` unused."""

    def __init__(self, pool: Sequence[Doc], seed: int | None, indices: list[int] | None = None):
        self.pool = list(pool)

    def sample(self, n: int, eval_doc: Doc | None = None) -> list[Doc]:
        """Return ``pool[:n]``."""
        pool = _without(eval_doc, self.pool) if eval_doc is not None else self.pool
        if n > len(pool):
            raise ValueError(f"{n} few-shot samples requested but only {len(pool)} available")
        return pool[:n]


SAMPLERS: dict[str, type] = {"default": DefaultSampler, "first_n": FirstNSampler}
