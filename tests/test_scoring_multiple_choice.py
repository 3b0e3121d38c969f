"""multiple_choice_metrics / request_loglikelihoods against lm-eval's own process_results."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from lm_eval.api import metrics as lm
from lm_eval.api.task import ConfigurableTask

from evalfleet.scoring import (
    aggregate,
    loglikelihood_metrics,
    multiple_choice_metrics,
    request_loglikelihoods,
    stderr,
    truthfulqa_mc2,
)
from evalfleet.scoring.multiple_choice import MC_METRICS

ALL = ["acc", "acc_norm", "acc_bytes", "acc_mutual_info", "exact_match", "brier_score"]


def _lm_eval_doc(choices, gold, lls, greedy, unc, metrics):
    """Run lm-eval 0.4.13's ConfigurableTask.process_results on one doc."""
    fake = SimpleNamespace(
        config=SimpleNamespace(process_results=None),
        OUTPUT_TYPE="multiple_choice",
        _metric_fn_list={m: None for m in metrics},
        doc_to_choice=lambda doc: doc["choices"],
        doc_to_target=lambda doc: doc["gold"],
        multiple_input=False,
        multiple_target=isinstance(gold, list),
    )
    results = list(zip(lls, greedy, strict=True))
    if unc is not None:
        results += [(u, False) for u in unc]
    return ConfigurableTask.process_results(fake, {"choices": choices, "gold": gold}, results)


def _random_docs(rng, n_docs, multi=False, ties=False):
    docs = []
    words = ["a", "bb", "ccc", "dddd", "é", "日本語", "x y", " z"]
    for _ in range(n_docs):
        k = int(rng.integers(1, 6))
        choices = [str(rng.choice(words)) + str(i) for i in range(k)]
        lls = rng.choice([-1.0, -2.0, -3.0], size=k) if ties else rng.normal(-5, 3, size=k)
        greedy = rng.random(k) < 0.5
        unc = rng.normal(-5, 3, size=k)
        if multi:
            gold = sorted({int(x) for x in rng.integers(0, k, size=int(rng.integers(1, 3)))})
        else:
            gold = int(rng.integers(0, k))
            if rng.random() < 0.1:
                gold = -100
        docs.append((choices, gold, lls, greedy, unc))
    return docs


def _flatten(docs):
    lls = np.concatenate([d[2] for d in docs])
    greedy = np.concatenate([d[3] for d in docs])
    unc = np.concatenate([d[4] for d in docs])
    coff = np.cumsum([0] + [len(d[0]) for d in docs])
    golds = [d[1] if isinstance(d[1], list) else [d[1]] for d in docs]
    gvals = np.array([g for gs in golds for g in gs], dtype=np.int64)
    goff = np.cumsum([0] + [len(g) for g in golds])
    chars = np.array([float(len(c)) for d in docs for c in d[0]])
    nbytes = np.array([float(len(c.encode())) for d in docs for c in d[0]])
    return lls, greedy, coff, gvals, goff, chars, nbytes, unc


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_lm_eval_process_results(multi, ties):
    rng = np.random.default_rng(7 + multi + 2 * ties)
    docs = _random_docs(rng, 200, multi=multi, ties=ties)
    lls, greedy, coff, gvals, goff, chars, nbytes, unc = _flatten(docs)
    metrics = [m for m in ALL if not (multi and m in ("brier_score", "acc_mutual_info"))]
    ours = multiple_choice_metrics(lls, greedy, coff, gvals, goff, chars, nbytes, metrics, unc)
    for d, (choices, gold, dl, dg, du) in enumerate(docs):
        du = list(du) if "acc_mutual_info" in metrics else None
        ref = _lm_eval_doc(choices, gold, list(dl), list(dg), du, metrics)
        for m in metrics:
            if m == "brier_score":
                if gold == -100:
                    assert np.isnan(ours[m][d])
                    continue
                expect = lm.brier_score([ref[m]])
                assert ours[m][d] == pytest.approx(expect, rel=1e-12, abs=1e-15)
            else:
                assert ours[m][d] == ref[m], (m, d, choices, gold, dl)


def test_brier_aggregation_matches_lm_eval():
    rng = np.random.default_rng(3)
    docs = [d for d in _random_docs(rng, 300) if d[1] != -100]
    docs = [(c[:1] * 4, g % 1, np.resize(ll, 4), np.resize(gr, 4), u) for c, g, ll, gr, u in docs]
    lls, greedy, coff, gvals, goff, chars, nbytes, _ = _flatten(docs)
    ours = multiple_choice_metrics(lls, greedy, coff, gvals, goff, chars, nbytes, ["brier_score"])
    items = [_lm_eval_doc(d[0], d[1], list(d[2]), list(d[3]), None, ["brier_score"])
             ["brier_score"] for d in docs]
    assert aggregate("brier_score", ours["brier_score"]) == pytest.approx(
        lm.brier_score(items), rel=1e-12)
    assert stderr("brier_score", ours["brier_score"]) == "N/A"


def test_mean_aggregation_and_stderr_exact():
    rng = np.random.default_rng(11)
    docs = _random_docs(rng, 500)
    lls, greedy, coff, gvals, goff, chars, nbytes, unc = _flatten(docs)
    ours = multiple_choice_metrics(lls, greedy, coff, gvals, goff, chars, nbytes,
                                   ["acc", "acc_norm"], unc)
    for m in ("acc", "acc_norm"):
        items = [_lm_eval_doc(*d[:4], None, [m])[m] for d in docs]
        assert aggregate("mean", ours[m]) == lm.mean(items)
        assert stderr("mean", ours[m]) == lm.mean_stderr(items)


def test_pred_outputs_and_f1_mcc_items():
    lls = np.array([-1.0, -1.0, -3.0, np.nan, -2.0, -0.5])
    out = multiple_choice_metrics(
        lls, np.ones(6, bool), np.array([0, 3, 6]), np.array([1, 0]), np.array([0, 1, 2]),
        np.array([1.0, 2, 3, 1, 1, 1]), np.ones(6), ["pred", "pred_norm", "f1", "mcc", "acc"])
    assert out["pred"].tolist() == [0, 0]  # tie -> lowest; NaN wins like np.argmax
    assert out["pred_norm"].tolist() == [1, 0]
    assert out["f1"].tolist() == [[1, 0], [0, 0]]
    assert out["acc"].tolist() == [0.0, 1.0]


def test_errors():
    one = np.array([0.0])
    args = (one, np.ones(1, bool), np.array([0, 1]), np.array([0]), np.array([0, 1]), one, one)
    with pytest.raises(KeyError):
        multiple_choice_metrics(*args, ["nope"])
    with pytest.raises(ValueError):
        multiple_choice_metrics(*args, ["acc_mutual_info"])
    assert set(MC_METRICS) >= {"acc", "pred", "brier_score"}


def test_empty_docs_and_choices():
    e = np.empty(0)
    out = multiple_choice_metrics(e, e.astype(bool), np.array([0]), np.empty(0, np.int64),
                                  np.array([0]), e, e, ["acc", "exact_match", "pred"])
    assert all(v.shape == (0,) for v in out.values())
    out = multiple_choice_metrics(e, e.astype(bool), np.array([0, 0]), np.array([0]),
                                  np.array([0, 1]), e, e, ["acc", "exact_match", "pred"])
    assert out["acc"].tolist() == [0.0] and out["pred"].tolist() == [-1]


def test_request_loglikelihoods():
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 7, size=300)
    off = np.concatenate([[0], np.cumsum(lens)])
    vals = rng.normal(-2, 1, size=off[-1]).astype(np.float32)
    flags = rng.random(off[-1]) < 0.8
    ll, g = request_loglikelihoods(vals, flags, off)
    for i in range(300):
        seg = vals[off[i]:off[i + 1]].astype(np.float64)
        assert ll[i] == pytest.approx(float(np.sum(seg)), abs=1e-9)
        assert g[i] == bool(np.all(flags[off[i]:off[i + 1]]))
    assert ll.dtype == np.float64 and g.dtype == np.bool_
    assert ll[lens == 0].tolist() == [0.0] * int((lens == 0).sum())
    with pytest.raises(ValueError):
        request_loglikelihoods(vals, flags, np.array([0, off[-1] + 1]))


def test_loglikelihood_metrics():
    out = loglikelihood_metrics(np.array([-1.5, -0.2]), np.array([True, False]))
    assert out["perplexity"].tolist() == [-1.5, -0.2]
    assert out["acc"].tolist() == [1.0, 0.0]


def test_truthfulqa_mc2_matches_lm_eval():
    from lm_eval.tasks.truthfulqa.utils import process_results_mc2

    rng = np.random.default_rng(5)
    lls, labels, coff = [], [], [0]
    refs = []
    for _ in range(50):
        k = int(rng.integers(2, 9))
        ll = rng.normal(-20, 10, size=k)
        lab = (rng.random(k) < 0.4).astype(int)
        refs.append(process_results_mc2({"mc2_targets": {"labels": lab.tolist()}},
                                        [(x, False) for x in ll])["acc"])
        lls.append(ll)
        labels.append(lab)
        coff.append(coff[-1] + k)
    ours = truthfulqa_mc2(np.concatenate(lls), np.array(coff), np.concatenate(labels))
    np.testing.assert_allclose(ours, refs, rtol=1e-12, atol=1e-15)


def test_concurrent_calls_from_threads():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(8)
    off = np.arange(0, 40001, 4, dtype=np.int64)
    vals = rng.normal(size=40000)
    flags = np.ones(40000, bool)
    expect = request_loglikelihoods(vals, flags, off)[0]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: request_loglikelihoods(vals, flags, off)[0], range(16)))
    for o in outs:
        np.testing.assert_array_equal(o, expect)
