"""Every aggregation and closed-form stderr against lm-eval 0.4.13's own functions."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from lm_eval.api import metrics as lm

from evalfleet.scoring import (
    AGGREGATIONS,
    aggregate,
    count_bytes,
    count_words,
    rolling_metrics,
    stderr,
)

RNG = np.random.default_rng(2024)


def test_mean_median_perplexity_nanmean():
    for n in (1, 2, 3, 10, 101, 1000):
        x = RNG.normal(-3, 2, size=n)
        assert aggregate("mean", x) == lm.mean(list(x))
        assert aggregate("median", x) == lm.median(list(x))
        assert aggregate("perplexity", x) == lm.perplexity(list(x))
        y = x.copy()
        y[::3] = np.nan
        assert aggregate("nanmean", y) == pytest.approx(lm.nanmean(list(y)), rel=1e-12,
                                                           nan_ok=True)
        if n > 1:
            assert stderr("mean", x) == lm.mean_stderr(list(x))
    assert math.isnan(aggregate("nanmean", [np.nan, np.nan]))
    assert math.isnan(aggregate("nanmean", []))


def test_rolling_weighted_aggregations():
    texts = ["hello world", " leading space", "a\nb\tc  d ", "日本語 テキスト", "x"]
    lls = RNG.normal(-30, 5, size=len(texts))
    items = rolling_metrics(lls, [count_words(t) for t in texts], [count_bytes(t) for t in texts])
    ref_w = [(ll, len(re.split(r"\s+", t))) for ll, t in zip(lls, texts, strict=True)]
    ref_b = [(ll, len(t.encode())) for ll, t in zip(lls, texts, strict=True)]
    assert aggregate("weighted_perplexity", items["word_perplexity"]) == \
        lm.weighted_perplexity(ref_w)
    assert aggregate("weighted_perplexity", items["byte_perplexity"]) == \
        lm.weighted_perplexity(ref_b)
    assert aggregate("bits_per_byte", items["bits_per_byte"]) == lm.bits_per_byte(ref_b)
    for agg in ("weighted_perplexity", "bits_per_byte"):
        assert stderr(agg, items["bits_per_byte"]) == "N/A"


@pytest.mark.parametrize("k", [2, 3, 5])
def test_mcc_f1_match_sklearn_via_lm_eval(k):
    for n in (1, 2, 7, 50, 400):
        g = RNG.integers(0, k, size=n)
        p = np.where(RNG.random(n) < 0.6, g, RNG.integers(0, k, size=n))
        items = list(zip(g.tolist(), p.tolist(), strict=True))
        assert aggregate("matthews_corrcoef", items) == pytest.approx(
            lm.matthews_corrcoef(items), rel=1e-12, abs=1e-15)
        assert aggregate("mcc", np.array(items)) == aggregate("matthews_corrcoef", items)
        if k == 2:
            assert aggregate("f1", items) == pytest.approx(lm.f1_score(items), rel=1e-12)
        else:
            from sklearn.metrics import f1_score

            assert aggregate("f1_macro", items) == pytest.approx(
                f1_score(g, p, average="macro"), rel=1e-12)
            if len(set(g) | set(p)) > 2:
                with pytest.raises(ValueError):
                    lm.f1_score(items)
                with pytest.raises(ValueError):
                    aggregate("f1", items)


def test_f1_degenerate():
    for items in ([(0, 0), (0, 0)], [(1, 1)], [(0, 1), (1, 0)], [(-100, 1), (1, 1)]):
        assert aggregate("f1", items) == pytest.approx(lm.f1_score(items))
        assert aggregate("mcc", items) == pytest.approx(lm.matthews_corrcoef(items))


SENTS = [
    ("The cat sat on the mat.", "The cat is on the mat."),
    ("A quick brown fox.", "A fast brown fox!"),
    ("Hello there, general Kenobi.", "Hello there general Kenobi"),
    ("Numbers 1, 2 and 3.", "Numbers one two three"),
    ("Nothing matches here", "completely different words"),
]


@pytest.mark.parametrize("name,ref", [("bleu", lm.bleu), ("chrf", lm.chrf),
                                      ("chrf++", lm.chrfpp), ("ter", lm.ter)])
def test_sacrebleu_corpus_scores(name, ref):
    assert aggregate(name, SENTS) == pytest.approx(ref(SENTS), rel=1e-12)
    multi = [([r, r.upper()], p) for r, p in SENTS]
    assert aggregate(name, multi) == pytest.approx(ref(multi), rel=1e-12)


def test_stderr_na_rules():
    x = np.array([0.5, 0.25, 1.0])
    assert stderr("mean", x[:1]) == "N/A"
    assert stderr("mean", x, bootstrap_iters=0) == "N/A"
    assert stderr("median", x, bootstrap_iters=-1) == "N/A"
    assert stderr("brier_score", x) == "N/A"
    assert stderr("bypass", x) == "N/A"
    assert aggregate("bypass", x) == 999
    with pytest.raises(KeyError):
        aggregate("nope", x)


def test_every_aggregation_runs():
    pairs = [(0, 1), (1, 1), (0, 0), (1, 0)]
    inputs = {"weighted_perplexity": [(-3.0, 2), (-5.0, 4)], "bits_per_byte": [(-3.0, 2),
              (-5.0, 4)], "f1": pairs, "f1_macro": pairs, "matthews_corrcoef": pairs,
              "mcc": pairs, "bleu": SENTS, "chrf": SENTS, "chrf++": SENTS, "ter": SENTS,
              "acc_all": [(1, {"idx": {"paragraph": 0, "question": q}, "label": 1})
                          for q in (0, 1, 1)]}
    for name in AGGREGATIONS:
        items = inputs.get(name, [0.1, 0.2, 0.7])
        assert isinstance(float(aggregate(name, items)), float)
        se = stderr(name, items, bootstrap_iters=200)
        assert se == "N/A" or se >= 0.0
