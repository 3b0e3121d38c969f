"""Few-shot samplers with lm-eval's exact draw semantics (CPython ``random.Random``)."""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import Any

from evalfleet.tasks.errors import TaskError

Doc = dict[str, Any]


def _too_few(n: int, available: int) -> TaskError:
    return TaskError(f"num_fewshot {n} asks for more examples than the few-shot pool's "
                     f"{available} documents; give a smaller --num_fewshot")


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
            raise TaskError("no documents available for few-shot sampling")
        try:  # where lm-eval's draw raises (a pool too small), one line instead
            if not eval_doc:
                res = self.rnd.sample(self.pool, n)
            else:
                res = _without(eval_doc, self.rnd.sample(self.pool, n + 1), n)
            if len(res) < n:
                res = self.rnd.sample([x for x in self.pool if x != eval_doc], n)
        except ValueError:
            raise _too_few(n, len(self.pool)) from None
        return res


class FirstNSampler:
    """The first ``n`` pool docs in order (eval doc removed); ``fewshot_indices`` unused."""

    def __init__(self, pool: Sequence[Doc], seed: int | None, indices: list[int] | None = None):
        self.pool = list(pool)

    def sample(self, n: int, eval_doc: Doc | None = None) -> list[Doc]:
        """Return ``pool[:n]``."""
        pool = _without(eval_doc, self.pool) if eval_doc is not None else self.pool
        if n > len(pool):
            raise _too_few(n, len(pool))
        return pool[:n]


SAMPLERS: dict[str, type] = {"default": DefaultSampler, "first_n": FirstNSampler}
