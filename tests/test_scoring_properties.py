"""Hypothesis property tests: every kernel against a plain NumPy / Python reference."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from evalfleet.scoring import (
    aggregate,
    multiple_choice_metrics,
    request_loglikelihoods,
    truthfulqa_mc2,
)

FLOATS = st.one_of(st.floats(-1e6, 0.0, width=64), st.just(float("nan")))
SMALL = st.sampled_from([-1.0, -2.0, -0.5, 0.0, float("nan"), -1e300])
SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def segments(draw, elements=FLOATS, max_segments=12, max_len=6):
    lens = draw(st.lists(st.integers(0, max_len), max_size=max_segments))
    total = sum(lens)
    vals = draw(hnp.arrays(np.float64, total, elements=elements))
    flags = draw(hnp.arrays(np.bool_, total))
    return vals, flags, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)


@SETTINGS
@given(segments())
def test_request_loglikelihoods_reference(data):
    vals, flags, off = data
    ll, g = request_loglikelihoods(vals, flags, off)
    for i in range(len(off) - 1):
        seg = vals[off[i]:off[i + 1]]
        ref = math.fsum(seg) if not np.isnan(seg).any() else float("nan")
        np.testing.assert_allclose(ll[i], ref, rtol=1e-12, atol=1e-6)
        assert g[i] == bool(flags[off[i]:off[i + 1]].all())


def test_request_loglikelihoods_large():
    rng = np.random.default_rng(0)
    n = 200_000
    lens = rng.integers(0, 20, n)
    off = np.concatenate([[0], np.cumsum(lens)])
    vals = rng.normal(-1, 1, off[-1]).astype(np.float32)
    ll, g = request_loglikelihoods(vals, np.ones(off[-1], bool), off)
    csum = np.concatenate([[0.0], np.cumsum(vals, dtype=np.float64)])
    np.testing.assert_allclose(ll, csum[off[1:]] - csum[off[:-1]], atol=1e-6)
    assert g.all()


@st.composite
def mc_docs(draw):
    ks = draw(st.lists(st.integers(0, 6), min_size=0, max_size=10))
    docs = []
    for k in ks:
        lls = draw(st.lists(SMALL, min_size=k, max_size=k))
        unc = draw(st.lists(SMALL, min_size=k, max_size=k))
        chars = draw(st.lists(st.integers(0, 5), min_size=k, max_size=k))
        greedy = draw(st.lists(st.booleans(), min_size=k, max_size=k))
        golds = draw(st.lists(st.sampled_from([-100, -1, 0, 1, 2, 3, 4, 5, 6]),
                              min_size=0, max_size=3))
        docs.append((lls, unc, chars, greedy, golds))
    return docs


def _np_reference(lls, unc, chars, greedy, golds):
    """Plain NumPy version of lm-eval's per-doc multiple-choice logic."""
    k = len(lls)
    if k == 0:
        return {"acc": 0.0, "acc_norm": 0.0, "acc_mutual_info": 0.0, "exact_match": 0.0}
    a = np.array(lls, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        preds = {"acc": np.argmax(a), "acc_norm": np.argmax(a / np.array(chars, float)),
                 "acc_mutual_info": np.argmax(a - np.array(unc))}
    out = {m: 1.0 if p in golds else 0.0 for m, p in preds.items()}
    valid = [g for g in golds if g != -100 and -k <= g < k]
    out["exact_match"] = float(any(greedy[g] for g in valid))
    return out


@SETTINGS
@given(mc_docs())
def test_multiple_choice_reference(docs):
    lls = np.array([x for d in docs for x in d[0]], dtype=np.float64)
    unc = np.array([x for d in docs for x in d[1]], dtype=np.float64)
    chars = np.array([x for d in docs for x in d[2]], dtype=np.float64)
    greedy = np.array([x for d in docs for x in d[3]], dtype=bool)
    coff = np.concatenate([[0], np.cumsum([len(d[0]) for d in docs])]).astype(np.int64)
    gvals = np.array([g for d in docs for g in d[4]], dtype=np.int64)
    goff = np.concatenate([[0], np.cumsum([len(d[4]) for d in docs])]).astype(np.int64)
    metrics = ["acc", "acc_norm", "acc_mutual_info", "exact_match", "brier_score"]
    out = multiple_choice_metrics(lls, greedy, coff, gvals, goff, chars, chars, metrics, unc)
    for i, d in enumerate(docs):
        ref = _np_reference(*d)
        for m, v in ref.items():
            assert out[m][i] == v, (m, d)
        k = len(d[0])
        ok = len(d[4]) == 1 and d[4][0] != -100 and -k <= d[4][0] < k
        if ok:
            a = np.array(d[0])
            p = np.exp(a - np.max(a))
            p = p / p.sum()
            ref_b = np.sum((p - np.eye(k)[d[4][0]]) ** 2)
            np.testing.assert_allclose(out["brier_score"][i], ref_b, rtol=1e-12, atol=1e-15)
        else:
            assert np.isnan(out["brier_score"][i])


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_mcc_and_f1_macro_vs_sklearn(items):
    from sklearn.metrics import f1_score, matthews_corrcoef

    g = [a for a, _ in items]
    p = [b for _, b in items]
    np.testing.assert_allclose(aggregate("mcc", items), matthews_corrcoef(g, p),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(aggregate("f1_macro", items),
                               f1_score(g, p, average="macro", zero_division=0.0),
                               rtol=1e-12, atol=1e-15)


@SETTINGS
@given(hnp.arrays(np.float64, st.integers(1, 50),
                  elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)))
def test_median_perplexity_mean(x):
    assert aggregate("median", x) == sorted(x.tolist())[len(x) // 2]
    assert aggregate("mean", x) == sum(x.tolist()) / len(x)
    m = sum(x.tolist()) / len(x)
    if -m < 700:
        assert aggregate("perplexity", x) == math.exp(-m)


@SETTINGS
@given(st.lists(st.lists(st.tuples(st.floats(-50, 0), st.integers(0, 1)), min_size=1,
                         max_size=8), max_size=8))
def test_truthfulqa_mc2_reference(docs):
    lls = np.array([a for d in docs for a, _ in d], dtype=np.float64)
    lab = np.array([b for d in docs for _, b in d], dtype=np.int64)
    coff = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    out = truthfulqa_mc2(lls, coff, lab)
    for i, d in enumerate(docs):
        p = np.exp([a for a, _ in d])
        p = p / p.sum()
        ref = p[np.array([b for _, b in d]) == 1].sum()
        np.testing.assert_allclose(out[i], ref, rtol=1e-12, atol=1e-15)
