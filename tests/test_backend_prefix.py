"""Prefix sharing in the hf backend: same numbers as lm-eval, fewer positions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import answers

from evalfleet.inference.backends.hf import HFBackend
from evalfleet.inference.backends.hf_text import make_score_request
from evalfleet.inference.backends.prefix import build_trie, count_nodes, subtree_inputs

LETTERS = "ABCD"


def _mmlu_requests(data_dir: Path, n_docs: int) -> tuple[list[tuple[str, str]], list[int]]:
    """5-shot MMLU anatomy prompts (first_n shots) with " A".." D"; and each doc's answer."""
    base = data_dir / "cais/mmlu/anatomy"
    shots = [json.loads(x) for x in (base / "dev.jsonl").read_text().splitlines()[:5]]
    docs = [json.loads(x) for x in (base / "test.jsonl").read_text().splitlines()[:n_docs]]

    def block(d: dict) -> str:
        opts = "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, d["choices"], strict=True))
        return f"{d['question'].strip()}{opts}\nAnswer:"

    head = "The following are multiple choice questions (with answers) about anatomy.\n\n"
    head += "".join(f"{block(s)} {LETTERS[s['answer']]}\n\n" for s in shots)
    reqs = [(head + block(d), f" {L}") for d in docs for L in LETTERS]
    return reqs, [d["answer"] for d in docs]


def _arc_requests(data_dir: Path, n_docs: int) -> list[tuple[str, str]]:
    path = data_dir / "allenai/ai2_arc/ARC-Easy/test.jsonl"
    docs = [json.loads(x) for x in path.read_text().splitlines()[:n_docs]]
    return [(f"Question: {d['question']}\nAnswer:", f" {c}")
            for d in docs for c in d["choices"]["text"]]


def _backend(model_dir: Path, batch_size: int | str, **kw) -> HFBackend:
    return HFBackend.from_model_args({"pretrained": str(model_dir), "device": "cpu", **kw},
                                     batch_size=batch_size)


def _record_forwards(backend: HFBackend, monkeypatch) -> list:
    """The plan of every forward the backend's scorer runs from now on (appended as run)."""
    chunks: list = []
    real = backend.scorer._mask
    monkeypatch.setattr(backend.scorer, "_mask", lambda ch: chunks.append(ch) or real(ch))
    return chunks


@pytest.fixture(scope="module")
def mixed_requests(data_dir) -> list[tuple[str, str]]:
    mmlu, _ = _mmlu_requests(data_dir, 4)
    extra = [("Paris is the capital of", " France"), ("Paris is the capital of", " France."),
             ("Paris is the capital of", " Germany, a country"), ("", "Hello world")]
    return mmlu + _arc_requests(data_dir, 5) + extra


def test_trie_shape():
    inputs = [[1, 2, 3], [1, 2, 4, 5], [1, 2], [7], [1, 2, 4, 6]]
    root = build_trie(inputs)
    assert count_nodes(root) == len({tuple(s[:k]) for s in inputs for k in range(1, len(s) + 1)})
    assert root.n_paths == 4
    shared = root.children[0]
    assert shared.tokens == [1, 2] and shared.inputs == [2]
    assert shared.n_paths == 3 and sorted(subtree_inputs(shared)) == [0, 1, 2, 4]
    assert [c.tokens for c in shared.children] == [[3], [4]]


def test_batch_sizes_give_the_same_values(tiny_model_dir, mixed_requests):
    runs = {bs: answers(_backend(tiny_model_dir, bs).loglikelihood(mixed_requests))
            for bs in (1, 3, 16)}
    runs["plain"] = answers(_backend(tiny_model_dir, 1, prefix_sharing=False).loglikelihood(
        mixed_requests))
    runs["auto"] = answers(_backend(tiny_model_dir, "auto").loglikelihood(mixed_requests))
    for name, scores in runs.items():
        for a, b in zip(runs[1], scores, strict=True):
            assert a.logprobs.shape == b.logprobs.shape, name
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0, err_msg=name)
            assert (a.greedy == b.greedy).all(), name


@pytest.mark.reference
def test_prefix_sharing_matches_lm_eval(tiny_model_dir, data_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    mmlu, _ = _mmlu_requests(data_dir, 6)
    reqs = mmlu + _arc_requests(data_dir, 6)
    ours = answers(_backend(tiny_model_dir, 8).loglikelihood(reqs))
    ref = HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=8).loglikelihood(
        [Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)])
    for s, (ll, greedy) in zip(ours, ref, strict=True):
        assert abs(s.total - ll) <= 1e-4 and s.is_greedy == greedy
    # identical argmax per doc (docs are consecutive runs of requests with one context)
    docs: dict[str, list[int]] = {}
    for i, (ctx, _) in enumerate(reqs):
        docs.setdefault(ctx, []).append(i)
    for idx in docs.values():
        assert np.argmax([ours[i].total for i in idx]) == np.argmax([ref[i][0] for i in idx])


@pytest.mark.slow
@pytest.mark.reference
def test_prefix_sharing_matches_lm_eval_real_model(real_model_dir, data_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    mmlu, _ = _mmlu_requests(data_dir, 2)
    reqs = mmlu + _arc_requests(data_dir, 3)
    ours = answers(_backend(real_model_dir, 8).loglikelihood(reqs))
    ref = HFLM(pretrained=str(real_model_dir), device="cpu", batch_size=8).loglikelihood(
        [Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)])
    for s, (ll, greedy) in zip(ours, ref, strict=True):
        assert abs(s.total - ll) <= 1e-4 and s.is_greedy == greedy


def test_prefix_sharing_computes_fewer_positions(tiny_model_dir, data_dir):
    mmlu, _ = _mmlu_requests(data_dir, 10)
    reqs = mmlu + _arc_requests(data_dir, 10)
    shared = _backend(tiny_model_dir, 8)
    plain = _backend(tiny_model_dir, 8, prefix_sharing=False)
    a, b = answers(shared.loglikelihood(reqs)), answers(plain.loglikelihood(reqs))
    np.testing.assert_allclose([s.total for s in a], [s.total for s in b], atol=1e-4)
    encoded = [shared.tok.encode_request(c, x) for c, x in reqs]
    floor = count_nodes(build_trie(list({tuple((c + x)[:-1]) for c, x in encoded})))
    assert floor <= shared.positions_computed < plain.positions_computed / 2


def test_a_short_shared_edge_does_not_hide_a_long_one_below(tiny_model_dir):
    """Regression: two documents share one first token (too short to forward on its own); the
    100-token context below it, shared by four choices, must still be forwarded once."""
    backend = _backend(tiny_model_dir, 8)
    ctx_a, ctx_b = [5, *range(100, 200)], [5, *range(300, 400)]
    reqs = [make_score_request(ctx_a, [7 + 2 * k, 8], backend.max_length) for k in range(4)]
    reqs.append(make_score_request(ctx_b, [7], backend.max_length))
    with torch.inference_mode():
        shared, positions = backend.scorer.score(reqs, lambda _: 8, shared=True)
    floor = count_nodes(build_trie(list({r.seq[:-1] for r in reqs})))
    assert floor == 1 + 100 + 4 + 100
    assert floor <= positions <= floor + 1  # + the carried first token
    assert backend.scorer.positions == positions
    with torch.inference_mode():
        plain, _ = backend.scorer.score(reqs, lambda _: 8, shared=False)
    for a, b in zip(shared, plain, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_an_edge_is_shared_by_the_jobs_below_it_not_by_its_paths(tiny_model_dir, monkeypatch):
    """Regression: ten long contexts (four choices each) open with the same two tokens. Left
    unshared those two tokens ride in the ten context jobs (18 positions more), shared they
    cost a forward of their own: the rule counted the 40 paths below (78 positions saved,
    over ``min_shared_tokens``) instead of the 10 jobs, and ran a 1 x 2 forward first."""
    backend = _backend(tiny_model_dir, 8, prefix_cache_mb=0)
    contexts = [[5, 6, *range(1000 + 700 * k, 1600 + 700 * k)] for k in range(10)]
    reqs = [make_score_request(ctx, [7 + c, 8], backend.max_length)
            for ctx in contexts for c in range(4)]
    chunks = _record_forwards(backend, monkeypatch)
    with torch.inference_mode():
        shared, positions = backend.scorer.score(reqs, lambda _: 16, shared=True)
    floor = count_nodes(build_trie(list({r.seq[:-1] for r in reqs})))
    assert positions == floor + 9 * 2  # the two tokens once per context job
    assert min(ch.ids.shape[1] for ch in chunks) > 2  # no forward of the two tokens alone
    with torch.inference_mode():
        plain, _ = backend.scorer.score(reqs, lambda _: 8, shared=False)
    for a, b in zip(shared, plain, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_give_the_values_of_separate_rows(tiny_model_dir, mixed_requests, attn,
                                                      monkeypatch):
    """Short continuations after one context share a row, kept apart by a 4D mask."""
    backend = _backend(tiny_model_dir, 8, attn_implementation=attn)
    assert backend.scorer.packing
    packed_forwards = []
    real = backend.scorer._mask

    def spy(chunk):
        if chunk.mask == "4d":  # pieces per row (jobs, or edges of a tree job)
            packed_forwards.append(max(len(np.unique(chunk.piece[i, :w]))
                                       for i, w in enumerate(chunk.widths)))
        return real(chunk)

    monkeypatch.setattr(backend.scorer, "_mask", spy)
    packed = answers(backend.loglikelihood(mixed_requests))
    assert packed_forwards and max(packed_forwards) > 1
    separate = answers(_backend(tiny_model_dir, 1, prefix_sharing=False).loglikelihood(
        mixed_requests))
    for a, b in zip(packed, separate, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
        assert (a.greedy == b.greedy).all()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_subtree_is_one_forward_under_a_tree_mask(tiny_model_dir, attn, monkeypatch):
    """A context with answers that share their first tokens (three levels of the trie) is
    one job: every edge once, one forward, each edge attending only to the edges above it."""
    backend = _backend(tiny_model_dir, 8, attn_implementation=attn, prefix_cache_mb=0)
    context = [5, *range(100, 140)]
    answers_ = [[7, 8, 9], [7, 8, 10, 11], [7, 12], [13], [7, 8, 9, 14]]
    reqs = [make_score_request(context, a, backend.max_length) for a in answers_]
    # a second document after another context, in the same row
    reqs += [make_score_request([5, *range(200, 220)], a, backend.max_length)
             for a in ([7, 8], [7, 9])]
    chunks = _record_forwards(backend, monkeypatch)
    with torch.inference_mode():
        shared, positions = backend.scorer.score(reqs, lambda _: 8, shared=True)
    floor = count_nodes(build_trie(list({r.seq[:-1] for r in reqs})))
    assert positions == floor  # no edge computed twice
    assert len(chunks) == 1 and chunks[0].mask == "4d"
    ancestors = chunks[0].ancestors
    assert ancestors is not None and ancestors.sum() > ancestors.shape[0] // 2  # levels
    with torch.inference_mode():
        plain, _ = backend.scorer.score(reqs, lambda _: 1, shared=False)
    for a, b in zip(shared, plain, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
        assert (a.greedy == b.greedy).all()


def test_rows_are_cut_into_forwards_at_the_least_cost():
    """Positions computed (padding included) plus ``forward_cost`` per forward, least; never
    more rows than the limit allows for the padded length (the longest context counts)."""
    from types import SimpleNamespace

    from evalfleet.inference.backends.hf_score import Job, Row, _SharedPlanner

    def rows(*shapes: tuple[int, int]) -> list[Row]:
        return [Row((), ctx, [Job((), ctx, [1] * width, [], None)]) for width, ctx in shapes]

    def cut(forward_cost: int, limit, shapes) -> list[list[int]]:
        planner = SimpleNamespace(scorer=SimpleNamespace(forward_cost=forward_cost),
                                  limit=limit)
        return [[r.width for r in chunk]
                for chunk in _SharedPlanner._partition(planner, rows(*shapes))]

    shapes = [(100, 0), (90, 0), (20, 0), (20, 0), (20, 0)]
    assert cut(64, lambda _: 8, shapes) == [[100, 90], [20, 20, 20]]
    assert cut(1000, lambda _: 8, shapes) == [[100, 90, 20, 20, 20]]
    assert sum(len(c) * c[0] for c in cut(0, lambda _: 8, shapes)) == 250  # no padding
    assert max(len(c) for c in cut(1000, lambda _: 2, shapes)) == 2
    # together the padded length is 100 + 200 (the second row's context): one row each
    assert cut(1000, lambda length: 1 if length > 250 else 8, [(100, 0), (90, 200)]) == [
        [100], [90]]
