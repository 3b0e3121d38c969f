"""The mmlu group's aggregates and stderrs equal lm-eval 0.4.13's on the same per-sample values.

evalfleet's path: built-in mmlu tree → per-task scoring.aggregate/stderr → results.group_results.
lm-eval's path: its own ``Group.aggregate`` over an ``lm_eval.api.group.Group`` tree of the same
shape, fed per-task values from its own ``mean`` / ``mean_stderr``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from evalfleet import scoring
from evalfleet.server import results as results_mod
from evalfleet.server.planning import _leaves
from evalfleet.tasks import TaskManager


@pytest.fixture(scope="module")
def mmlu_tree(data_dir):
    return TaskManager(data_dir=data_dir).load(["mmlu"])


def _per_sample_acc(names: list[str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {name: (rng.random(int(rng.integers(5, 60))) < rng.random()).astype(float)
            for name in names}


def _lm_eval_group(name: str, tree, agg_metric_configs):
    from lm_eval.api.group import Group
    from lm_eval.api.task import ConfigurableTask

    spec = tree.groups[name]
    group = Group(name=name, alias=spec.alias,
                  aggregate_metric_list=agg_metric_configs(spec))
    for child in spec.children:
        if child in tree.groups:
            group.add(_lm_eval_group(child, tree, agg_metric_configs))
        else:
            leaf = ConfigurableTask.__new__(ConfigurableTask)
            leaf._config = SimpleNamespace(task=child)
            group.add(leaf)
    return group


def test_mmlu_group_aggregate_matches_lm_eval(mmlu_tree):
    from lm_eval.api.metrics import mean, mean_stderr
    from lm_eval.config.group import AggMetricConfig

    leaves = list(mmlu_tree.tasks)
    assert len(leaves) == 57
    samples = _per_sample_acc(leaves)

    ours = {t: {"acc,none": scoring.aggregate("mean", v),
                "acc_stderr,none": scoring.stderr("mean", v), "sample_len": len(v)}
            for t, v in samples.items()}
    theirs = {t: {"acc,none": mean(list(v)), "acc_stderr,none": mean_stderr(list(v)),
                  "sample_len": len(v)} for t, v in samples.items()}
    for t in leaves:
        assert ours[t]["acc,none"] == pytest.approx(theirs[t]["acc,none"], abs=1e-12)
        assert ours[t]["acc_stderr,none"] == pytest.approx(theirs[t]["acc_stderr,none"],
                                                           abs=1e-12)

    groups = [results_mod.GroupInfo(
        name=g.name, alias=g.alias, version=g.version, children=list(g.children),
        leaves=_leaves(mmlu_tree, g.name),
        aggregate_metric_list=[{"metric": a.metric, "filter_list": a.filter_list,
                                "weight_by_size": a.weight_by_size}
                               for a in g.aggregate_metric_list])
        for g in mmlu_tree.groups.values()]
    ours_grouped = results_mod.group_results(groups, ours,
                                             {t: len(v) for t, v in samples.items()})

    def configs(spec):
        return [AggMetricConfig(metric=a.metric, aggregation="mean",
                                weight_by_size=a.weight_by_size, filter_list=a.filter_list)
                for a in spec.aggregate_metric_list]

    lm_root = _lm_eval_group("mmlu", mmlu_tree, configs)
    lm_groups = {g.name: g for g in lm_root.get_all_groups()} | {"mmlu": lm_root}
    assert set(lm_groups) == set(ours_grouped) and len(lm_groups) == 5
    for name, lm_group in lm_groups.items():
        expected = lm_group.aggregate(theirs)
        got = ours_grouped[name]
        assert got["sample_len"] == expected["sample_len"]
        assert got["acc,none"] == pytest.approx(expected["acc,none"], abs=1e-12), name
        assert got["acc_stderr,none"] == pytest.approx(expected["acc_stderr,none"],
                                                       abs=1e-12), name
        assert got["sample_count"] == expected["sample_count"]
