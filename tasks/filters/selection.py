"""Selection filters: take_first, take_first_k, majority_vote."""

from __future__ import annotations

from collections import Counter

from evalfleet.tasks.filters.base import Filter


class TakeFirstFilter(Filter):
    """Keep only the first response of each request."""

    def apply(self, resps, docs):
        return [r[0] for r in resps]


class TakeKFilter(Filter):
    """Keep the first ``k`` responses of each request."""

    def __init__(self, k: int, **kwargs) -> None:
        self.k = k

    def apply(self, resps, docs):
        resps = list(resps)
        if resps and len(resps[0]) < self.k:
            raise ValueError(f"need at least {self.k} responses per doc; increase repeats")
        return [r[: self.k] for r in resps]


class MajorityVoteFilter(Filter):
    """The most common response (first seen wins ties), as a one-element list."""

    def apply(self, resps, docs):
        return [[Counter(r).most_common(1)[0][0]] for r in resps]
