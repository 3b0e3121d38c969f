"""exact_match (vs lm-eval's exact_match_hf_evaluate) and pass@k."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lm_eval.api.metrics import exact_match_hf_evaluate

from evalfleet.scoring import exact_match, pass_at_k

OPTIONS = [
    {},
    {"ignore_case": True},
    {"ignore_punctuation": True},
    {"ignore_numbers": True},
    {"ignore_case": True, "ignore_punctuation": True, "ignore_numbers": True},
    {"regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"], "ignore_case": True},
]


def _ref(preds, refs, **kw):
    return [exact_match_hf_evaluate(predictions=[p], references=[r], **kw)["exact_match"]
            for p, r in zip(preds, refs, strict=True)]


@pytest.mark.parametrize("kw", OPTIONS)
def test_exact_match_examples(kw):
    preds = ["1,234", "The answer is 42.", "ABC", "a.b", "#### 7", "x\0", "Ünïcode", "12$"]
    refs = ["1234", "the answer is 42", "abc", "ab", "7", "x", "ünïcode", "$12"]
    assert exact_match(preds, refs, **kw).tolist() == _ref(preds, refs, **kw)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=5),
       st.sampled_from(OPTIONS))
def test_exact_match_property(pairs, kw):
    preds = [p for p, _ in pairs]
    refs = [r for _, r in pairs]
    # identical strings must compare equal whatever the options
    assert exact_match(preds, preds, **kw).tolist() == [1.0] * len(preds)
    assert exact_match(preds, refs, **kw).tolist() == _ref(preds, refs, **kw)


def test_exact_match_length_mismatch():
    with pytest.raises(ValueError):
        exact_match(["a"], [])


def _comb_ref(n, c, k):
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 200), st.integers(0, 200)), max_size=20),
       st.integers(1, 50))
def test_pass_at_k_property(nc, k):
    n = np.array([a for a, _ in nc], dtype=np.int64)
    c = np.array([min(a, b) for a, b in nc], dtype=np.int64)
    ours = pass_at_k(n, c, k)
    ref = [_comb_ref(int(a), int(b), k) for a, b in zip(n, c, strict=True)]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_pass_at_k_errors_and_edges():
    assert pass_at_k(np.array([10]), np.array([0]), 1).tolist() == [0.0]
    assert pass_at_k(np.array([10]), np.array([10]), 1).tolist() == [1.0]
    assert pass_at_k(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 1).shape == (0,)
    with pytest.raises(ValueError):
        pass_at_k(np.array([3]), np.array([4]), 1)
    with pytest.raises(ValueError):
        pass_at_k(np.array([3]), np.array([1]), 0)
