"""The hf worker's prefix KV cache kept across batches: reuse, equal numbers, the budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import answers
from test_backend_prefix import _mmlu_requests

from evalfleet.inference.backends.base import BackendArgumentError
from evalfleet.inference.backends.hf import HFBackend
from evalfleet.inference.backends.hf_text import make_score_request
from evalfleet.inference.backends.prefix_cache import PrefixKVCache


def _backend(model_dir: Path, **kw) -> HFBackend:
    return HFBackend.from_model_args({"pretrained": str(model_dir), "device": "cpu", **kw},
                                     batch_size=8)


def _assert_same(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.logprobs.shape == b.logprobs.shape
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
        assert (a.greedy == b.greedy).all()


@pytest.fixture(scope="module")
def mmlu_batches(data_dir) -> list[list[tuple[str, str]]]:
    """Three batches of 5-shot MMLU anatomy requests (two documents each, one prompt)."""
    reqs, _ = _mmlu_requests(data_dir, 6)
    return [reqs[i: i + 8] for i in range(0, len(reqs), 8)]


def _score_batches(backend: HFBackend, batches) -> tuple[list, list[int], list[int]]:
    """Answers of every batch (one call each), the positions each call computed and the
    positions each read from the prefix cache."""
    out, positions, reused = [], [], []
    cache = backend.scorer.prefix_cache
    for batch in batches:
        before, before_reused = backend.positions_computed, cache.reused_positions
        out.extend(answers(backend.loglikelihood(batch)))
        positions.append(backend.positions_computed - before)
        reused.append(cache.reused_positions - before_reused)
    return out, positions, reused


def test_a_later_batch_reads_the_shared_prompt_instead_of_computing_it(tiny_model_dir,
                                                                        mmlu_batches):
    cached, uncached = _backend(tiny_model_dir), _backend(tiny_model_dir, prefix_cache_mb=0)
    got, pos_cached, reused = _score_batches(cached, mmlu_batches)
    want, pos_uncached, none = _score_batches(uncached, mmlu_batches)
    _assert_same(got, want)
    assert none == [0, 0, 0] and cached.scorer.prefix_cache.hits == len(mmlu_batches) - 1
    # the first batch computes everything; each later one reads the 5-shot head from the cache
    assert pos_cached[0] == pos_uncached[0] and reused[0] == 0
    head = len(cached.tok.encode_request(*mmlu_batches[0][0])[0])  # context tokens of one doc
    for c, u, r in zip(pos_cached[1:], pos_uncached[1:], reused[1:], strict=True):
        assert head / 2 < r < head  # the prompt before the documents differ
        # what the batch's documents share beyond the cached part is computed once, or once
        # per document when too short for a forward of its own (< min_shared_tokens in all)
        assert u - r <= c < u - r + cached.args.min_shared_tokens
    # and against all requests in one batch, the uncached path's best case
    one_batch = answers(_backend(tiny_model_dir, prefix_cache_mb=0).loglikelihood(
        [r for b in mmlu_batches for r in b]))
    _assert_same(got, one_batch)


def test_a_plan_made_while_the_batch_before_it_is_pending_reads_its_prefix(tiny_model_dir,
                                                                          mmlu_batches):
    """Planning runs ahead of computing: the second plan reads the entry the first fills."""
    backend = _backend(tiny_model_dir)
    first = backend._plan(backend._prepare_pairs(mmlu_batches[0]))
    second = backend._plan(backend._prepare_pairs(mmlu_batches[1]))
    assert first.plan.reused == 0 and second.plan.reused > 0
    assert not second.plan.preload[0][1].ready
    with backend._lock:
        got = backend._score(first) + backend._score(second)
    want, _, _ = _score_batches(_backend(tiny_model_dir, prefix_cache_mb=0), mmlu_batches[:2])
    _assert_same(got, want)
    assert backend.scorer.prefix_cache.hits == 1


def test_a_plan_whose_prefix_was_never_computed_is_planned_again(tiny_model_dir, mmlu_batches):
    """The batch that was to fill the entry never ran (it failed): the next one computes it."""
    backend = _backend(tiny_model_dir)
    dropped = backend._plan(backend._prepare_pairs(mmlu_batches[0]))
    second = backend._plan(backend._prepare_pairs(mmlu_batches[1]))
    assert second.plan.reused > 0
    for entry in dropped.plan.reserved:  # what Scorer.run does when a forward fails
        backend.scorer.prefix_cache.discard(entry)
    before = backend.positions_computed
    with backend._lock:
        got = backend._score(second)
    uncached = _backend(tiny_model_dir, prefix_cache_mb=0)
    want, [positions], _ = _score_batches(uncached, mmlu_batches[1:2])
    _assert_same(got, want)
    assert backend.positions_computed - before == positions  # everything computed, counted
    assert backend.scorer.prefix_cache.hits == 0
    # what it computed is kept: the third batch reads it
    _, [third], _ = _score_batches(backend, mmlu_batches[2:3])
    assert backend.scorer.prefix_cache.hits == 1 and third < positions


def test_only_context_is_read_from_the_cache(tiny_model_dir):
    """A request scoring tokens inside a cached prefix gets their log-probabilities computed."""
    backend = _backend(tiny_model_dir)
    head = list(range(100, 180))
    first = [make_score_request(head, [7 + k, 8], backend.max_length) for k in range(3)]
    # context: the first 50 tokens of the cached head; scored: the next 30 (inside the head)
    second = [make_score_request(head[:50], head[50:80], backend.max_length),
              make_score_request(head[:50], head[50:60], backend.max_length)]
    with torch.inference_mode():
        backend.scorer.score(first, lambda _: 8, shared=True)
        got, positions = backend.scorer.score(second, lambda _: 8, shared=True)
        want, _ = backend.scorer.score(second, lambda _: 8, shared=False)
    _assert_same(got, want)
    # the first scored position (49) predicts head[50]: 49 positions read, the other 30 computed
    assert backend.scorer.prefix_cache.reused_positions == 49
    assert positions == 79 - 49


def test_the_budget_evicts_the_least_recently_used_prefix(tiny_model_dir, data_dir):
    """Two subjects' prompts alternate under a budget that holds one of them."""
    anatomy, _ = _mmlu_requests(data_dir, 4)
    other = [(c.replace("anatomy", "astronomy"), x) for c, x in anatomy]
    probe = _backend(tiny_model_dir)
    answers(probe.loglikelihood(anatomy[:8]))
    [entry] = probe.scorer.prefix_cache.entries()
    budget = entry.nbytes * 3 // 2  # one prompt fits, two do not

    batches = [anatomy[:8], other[:8], anatomy[8:], other[8:]]
    small = _backend(tiny_model_dir)
    cache = small.scorer.prefix_cache
    cache.budget_bytes = budget  # the tiny model's KV is far below prefix_cache_mb's 1 MiB unit
    got, _, _ = _score_batches(small, batches)
    assert cache.evictions == 3 and cache.hits == 0 and len(cache) == 1
    assert 0 < cache.nbytes <= budget
    roomy = _backend(tiny_model_dir)
    want, _, _ = _score_batches(roomy, batches)
    assert roomy.scorer.prefix_cache.hits == 2 and roomy.scorer.prefix_cache.evictions == 0
    _assert_same(got, want)


def _kv(n: int) -> torch.Tensor:
    return torch.zeros((2, 1, n, 4))  # 32 * n bytes


def test_cache_entries_lru_and_redundancy():
    cache = PrefixKVCache(budget_bytes=32 * 25)
    a = cache.reserve([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert cache.reserve([1, 2, 3]) is None  # pending a covers it
    cache.fill(a, _kv(10))
    entry, n = cache.match([1, 2, 3, 9])
    assert entry is a and n == 3
    longer = cache.reserve([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    b = cache.reserve([20, 21, 22, 23, 24, 25, 26, 27, 28, 29])
    cache.fill(b, _kv(10))
    cache.fill(longer, _kv(12))  # drops a (a leading part of it)
    assert [len(e.tokens) for e in cache.entries()] == [12, 10] and cache.evictions == 0
    cache.match([20, 21])  # b is now the most recently used
    c = cache.reserve(list(range(40, 50)))
    cache.fill(c, _kv(10))  # 32 * 32 > budget: evict the least recently used (longer)
    assert [e for e in cache.entries()] == [b, c] and cache.evictions == 1
    assert cache.nbytes == 32 * 20
    assert longer.kv is not None  # a plan holding the evicted entry still reads it
    huge = cache.reserve(list(range(60, 90)))
    cache.fill(huge, _kv(30))  # larger than the whole budget: not kept
    assert cache.entries() == [b, c] and cache.nbytes == 32 * 20  # the others stay
    assert PrefixKVCache(0).match([1, 2])[0] is None and PrefixKVCache(0).reserve([1]) is None


def test_prefix_cache_mb_is_validated(tiny_model_dir):
    with pytest.raises(BackendArgumentError, match="prefix_cache_mb"):
        _backend(tiny_model_dir, prefix_cache_mb=-1)
