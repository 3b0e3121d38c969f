"""Bootstrap stderrs against lm-eval's bootstrap_stderr (within 3%), reproducibility."""

from __future__ import annotations

import contextlib
import io
import math

import numba
import numpy as np
import pytest
from lm_eval.api import metrics as lm

from evalfleet.scoring import stderr
from evalfleet.scoring.bootstrap import replicate_count, sacre_replicates
from evalfleet.scoring.sacre import sacreformat
from evalfleet.scoring.seeds import DEFAULT_SEED, derive_seeds

REF_ITERS = 20000  # lm-eval side (pure Python); ours always runs 100000


def _py_mcc(items):
    """sklearn's binary MCC formula in plain Python (fast reference statistic)."""
    tp = sum(1 for g, p in items if g == 1 and p == 1)
    tn = sum(1 for g, p in items if g == 0 and p == 0)
    fp = sum(1 for g, p in items if g == 0 and p == 1)
    fn = len(items) - tp - tn - fp
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return 0.0 if den == 0 else (tp * tn - fp * fn) / math.sqrt(den)


def _py_f1(items):
    tp = sum(1 for g, p in items if g == 1 and p == 1)
    fp = sum(1 for g, p in items if g != 1 and p == 1)
    fn = sum(1 for g, p in items if g == 1 and p != 1)
    return 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _lm_boot(fn, items, iters=REF_ITERS):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return lm.bootstrap_stderr(fn, items, iters)


@pytest.fixture(autouse=True)
def _no_pool(monkeypatch):
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(42)
    g = rng.integers(0, 2, 80)
    p = np.where(rng.random(80) < 0.7, g, 1 - g)
    return list(zip(g.tolist(), p.tolist(), strict=True))


def test_reference_statistics_match_sklearn(pairs):
    assert _py_mcc(pairs) == pytest.approx(lm.matthews_corrcoef(pairs), rel=1e-12)
    assert _py_f1(pairs) == pytest.approx(lm.f1_score(pairs), rel=1e-12)


@pytest.mark.parametrize("agg,ref", [("matthews_corrcoef", _py_mcc), ("f1", _py_f1)])
def test_count_bootstrap_within_3pct(pairs, agg, ref):
    ours = stderr(agg, pairs, 100000)
    assert ours == pytest.approx(_lm_boot(ref, pairs), rel=0.03)


@pytest.mark.parametrize("agg,ref", [("median", lm.median), ("perplexity", lm.perplexity),
                                     ("nanmean", lm.nanmean)])
def test_value_bootstrap_within_3pct(agg, ref):
    rng = np.random.default_rng(9)
    x = rng.normal(-2.0, 1.0, 60)
    if agg == "nanmean":
        x[rng.random(60) < 0.2] = np.nan
    ours = stderr(agg, x, 100000)
    assert ours == pytest.approx(_lm_boot(ref, list(x)), rel=0.03)


def test_multiclass_mcc_bootstrap_within_3pct():
    rng = np.random.default_rng(4)
    g = rng.integers(0, 4, 60)
    p = np.where(rng.random(60) < 0.5, g, rng.integers(0, 4, 60))
    items = list(zip(g.tolist(), p.tolist(), strict=True))
    from evalfleet.scoring import aggregate

    ours = stderr("mcc", items, 100000)
    assert ours == pytest.approx(_lm_boot(lambda xs: aggregate("mcc", xs), items, 10000),
                                 rel=0.03)


def test_reproducible_and_thread_independent(pairs):
    x = np.random.default_rng(1).normal(size=50)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = (stderr("mcc", pairs, 5000), stderr("median", x, 5000))
        numba.set_num_threads(before)
        many = (stderr("mcc", pairs, 5000), stderr("median", x, 5000))
    finally:
        numba.set_num_threads(before)
    assert one == many
    assert stderr("mcc", pairs, 5000, seed=7) != stderr("mcc", pairs, 5000, seed=8)


def test_replicate_count_matches_lm_eval_chunking():
    assert replicate_count(100000) == (1000, 100)
    assert replicate_count(1500) == (1000, 1)
    assert replicate_count(100) == (100, 1)
    assert stderr("median", [1.0, 2.0], 1) == "N/A"  # one replicate: no spread to measure
    s = derive_seeds(DEFAULT_SEED, 1000)
    assert len(set(s.tolist())) == 1000 and s.min() >= 0 and s.max() < 2**32


SENTS = [
    ("The cat sat on the mat.", "The cat is on the mat."),
    ("A quick brown fox.", "A fast brown fox!"),
    ("Hello there, general Kenobi.", "Hello there general Kenobi"),
    ("Numbers 1, 2 and 3.", "Numbers one two three"),
    ("Nothing matches here", "completely different words"),
    ("Same sentence.", "Same sentence."),
]


@pytest.mark.parametrize("name,ref", [("bleu", lm.bleu), ("chrf", lm.chrf),
                                      ("chrf++", lm.chrfpp), ("ter", lm.ter)])
def test_sacre_replicates_are_exact_corpus_scores(name, ref):
    reps = sacre_replicates(name, SENTS, 5, seed=3)
    seeds = derive_seeds(3, 5)
    for r, seed in enumerate(seeds):
        idx = np.random.default_rng(int(seed)).integers(0, len(SENTS), len(SENTS))
        assert reps[r] == pytest.approx(ref([SENTS[i] for i in idx]), rel=1e-12)
    assert sacreformat(SENTS)[0][0] == SENTS[0][1]


def test_sacre_stderr_capped_at_100(monkeypatch):
    calls = []
    import evalfleet.scoring.bootstrap as bs

    real = bs.sacre_replicates

    def spy(name, items, iters, seed=DEFAULT_SEED):
        calls.append(iters)
        return real(name, items, iters, seed)

    monkeypatch.setattr(bs, "sacre_replicates", spy)
    se = stderr("bleu", SENTS, 100000)
    assert calls == [100] and se > 0
