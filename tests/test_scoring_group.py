"""group_aggregate and the METRICS registry against lm-eval 0.4.13."""

from __future__ import annotations

import numpy as np
import pytest
from lm_eval.api import metrics as lm
from lm_eval.api.registry import AGGREGATION_REGISTRY, METRIC_REGISTRY

from evalfleet.scoring import AGGREGATIONS, METRICS, group_aggregate


@pytest.mark.parametrize("weight", [True, False])
def test_group_aggregate_matches_lm_eval(weight):
    rng = np.random.default_rng(1)
    for _ in range(50):
        k = int(rng.integers(1, 8))
        values = rng.random(k).tolist()
        stderrs = (rng.random(k) / 10).tolist()
        sizes = rng.integers(2, 500, size=k).tolist()
        score, se = group_aggregate(values, stderrs, sizes, weight_by_size=weight)
        assert score == lm.aggregate_subtask_metrics(values, sizes, weight)
        ref = lm.pooled_sample_stderr(stderrs, sizes) if weight else \
            lm.unweighted_mean_stderr(stderrs)
        assert se == pytest.approx(float(ref), rel=1e-12)


def test_group_documented_example():
    _, se = group_aggregate([0.6, 0.4], [0.2449489742783178, 0.2], [5, 5])
    assert se == pytest.approx(0.158114, abs=1e-6)


def test_group_na():
    assert group_aggregate([0.5, 0.5], [0.1, "N/A"], [10, 10])[1] == "N/A"
    assert group_aggregate([0.5, 0.5], [0.1, None], [10, 10])[1] == "N/A"
    assert group_aggregate([0.5, 0.5], [0.1], [10, 10])[1] == "N/A"


def test_metric_registry_matches_lm_eval_defaults():
    from lm_eval.api.registry import get_metric_aggregation, is_higher_better

    for name in METRIC_REGISTRY:
        assert name in METRICS, name
    for name, spec in METRICS.items():
        if name not in METRIC_REGISTRY:
            continue
        if name == "acc_all":
            # lm-eval registers acc_all with "mean", but its items are (pred, doc) pairs that
            # only its acc_all function (question-grouped) can aggregate; evalfleet uses that.
            assert spec.aggregation == "acc_all"
            continue
        agg = get_metric_aggregation(name)
        agg_name = next(k for k, v in AGGREGATION_REGISTRY.items() if v is agg)
        assert spec.aggregation == agg_name, name
        assert spec.higher_is_better == is_higher_better(name), name
        assert spec.aggregation in AGGREGATIONS
    for name in AGGREGATION_REGISTRY:
        assert name in AGGREGATIONS, name
