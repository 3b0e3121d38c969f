"""bench/bench_inference.py: the trie floor and lm-eval's (context, continuation) tokenization."""

from __future__ import annotations

import importlib.util
import itertools
import random
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "bench_inference.py"
_spec = importlib.util.spec_from_file_location("bench_inference", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)


def _naive_floor(seqs) -> int:
    """Distinct non-empty prefixes, counted by brute force."""
    return len({tuple(s[:i]) for s in seqs for i in range(1, len(s) + 1)})


def test_trie_floor_small_cases():
    assert bench.trie_floor([]) == 0
    assert bench.trie_floor([[]]) == 0
    assert bench.trie_floor([[1, 2, 3]]) == 3
    assert bench.trie_floor([[1, 2, 3], [1, 2, 3]]) == 3  # duplicates once
    assert bench.trie_floor([[1, 2, 3], [1, 2]]) == 3  # a prefix of another adds nothing
    assert bench.trie_floor([[1, 2, 3], [1, 2, 4], [1, 5]]) == 5
    assert bench.trie_floor([[1, 2], [3, 2]]) == 4  # same suffix, different root
    # four choices after one shared 100-token context: 100 + 4 x 3
    ctx = list(range(100))
    assert bench.trie_floor([ctx + [200 + i, 7, 8] for i in range(4)]) == 112


def test_trie_floor_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        seqs = [[rng.randrange(3) for _ in range(rng.randrange(0, 8))]
                for _ in range(rng.randrange(0, 12))]
        assert bench.trie_floor(seqs) == _naive_floor(seqs)
        assert bench.trie_floor(reversed(seqs)) == bench.trie_floor(seqs)


_VOCAB: dict[str, int] = {}


def _toy_encode(text: str, add_special_tokens: bool = True) -> list[int]:
    """A tokenizer that merges a space into the word after it (like GPT-2 BPE): ' b' is one
    token, and a run of spaces keeps its last space for the next word."""
    pieces, i = [], 0
    while i < len(text):
        j = i + 1
        if text[i] != " " or (j < len(text) and text[j] != " "):
            while j < len(text) and text[j] != " ":
                j += 1
        pieces.append(text[i:j])
        i = j
    return [_VOCAB.setdefault(p, len(_VOCAB) + 1) for p in pieces]


def test_encode_pair_moves_trailing_whitespace_and_splits_the_joint_tokens():
    ctx, cont = bench.encode_pair(_toy_encode, "Question: a\nAnswer: ", "yes")
    assert ctx == _toy_encode("Question: a\nAnswer:")
    assert cont == _toy_encode(" yes")  # the space moved, merged with the word
    assert ctx + cont == _toy_encode("Question: a\nAnswer: yes")
    ctx, cont = bench.encode_pair(_toy_encode, "x  \n ", "b")  # all trailing whitespace moves
    assert ctx == _toy_encode("x") and ctx + cont == _toy_encode("x  \n b")


def test_request_input_drops_last_token_truncates_and_handles_empty_context():
    ctx_cont = _toy_encode("a b c d")
    assert bench.request_input(_toy_encode, 0, "a b", " c d", 100) == ctx_cont[:-1]
    assert bench.request_input(_toy_encode, 0, "a b", " c d", 2) == ctx_cont[-3:-1]
    cont = _toy_encode("z y", add_special_tokens=False)
    assert bench.request_input(_toy_encode, 42, "", "z y", 100) == [42, *cont][:-1]
    assert bench.request_input(_toy_encode, cont[0], "", "z y", 100) == cont[:-1]


@pytest.mark.parametrize("n_choices", [2, 4])
def test_floor_of_multiple_choice_requests(n_choices):
    """One context, single-token choices: the inputs are all the same, the floor is the context."""
    words = [" w" + str(i) for i in range(n_choices)]
    inputs = [bench.request_input(_toy_encode, 0, "q: x\nA:", w, 100) for w in words]
    assert all(a == b for a, b in itertools.pairwise(inputs))
    assert bench.trie_floor(inputs) == len(_toy_encode("q: x\nA:"))


def _side(results: dict, samples: dict) -> object:
    return bench.Side(results=results, samples=samples)


def _samples(values: list[float], ll: float = -1.0) -> dict[int, dict]:
    return {i: {"acc": v, "resps": [[[ll, True]]]} for i, v in enumerate(values)}


def test_compare_needs_identical_samples_for_0_1_metrics():
    job = bench.Job("t", ("t",), None, 3)
    ref = _side({"t": {"acc,none": 2 / 3}}, {"t": _samples([1, 1, 0])})
    same = _side({"t": {"acc,none": 2 / 3}}, {"t": _samples([1, 1, 0], ll=-1.00002)})
    swapped = _side({"t": {"acc,none": 2 / 3}}, {"t": _samples([1, 0, 1])})
    identical, metric_diff, ll_diff, _ = bench.compare(job, ref, same)
    assert identical and metric_diff == 0 and ll_diff == pytest.approx(2e-5)
    identical, _, _, lines = bench.compare(job, ref, swapped)  # same mean, other samples
    assert not identical and "DIFF" in lines[0]


def test_compare_allows_rounding_of_real_valued_metrics_within_tolerance():
    job = bench.Job("t", ("t",), None, 2)
    ref = _side({"t": {"acc,none": 0.35}}, {"t": _samples([0.2, 0.5])})
    close = _side({"t": {"acc,none": 0.35 + 2e-7}}, {"t": _samples([0.2 + 4e-7, 0.5])})
    far = _side({"t": {"acc,none": 0.36}}, {"t": _samples([0.22, 0.5])})
    assert bench.compare(job, ref, close)[0]
    assert not bench.compare(job, ref, far)[0]
    assert not bench.compare(job, ref, close, continuous_tol=1e-8)[0]
