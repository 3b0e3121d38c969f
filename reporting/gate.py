"""A release gate: may the candidate run (B) ship, judged against a baseline (A) under a policy.

Each task of the policy (:mod:`.gate_policy`) gives checks, each PASS, FAIL, INCONCLUSIVE or
SKIPPED:

- **required**: the task (and each gated metric) is in both runs; FAIL otherwise. A task the
  policy does not require that a run lacks is SKIPPED.
- **floor**: the candidate's value is no worse than the floor (a minimum for metrics where higher
  is better, a maximum otherwise).
- **regression**: ``results compare``'s rows and tests (McNemar exact for 0/1 metrics, the
  paired t-test, the z-test on stderrs; :mod:`.compare`). FAIL when B is worse than A by more
  than max_regression and the difference is significant at alpha (``--fail-if-worse``'s rule;
  with ``correction: bonferroni`` at alpha divided by the number of regression tests);
  PASS when it is not and the test had the policy's power to detect a drop of max_regression
  (:mod:`.gate_power`); INCONCLUSIVE otherwise, saying how many documents would be needed.

The verdict: NO-GO when a blocking check fails, else INCONCLUSIVE when one is inconclusive (or
none could be judged), else GO. Advisory checks are reported and never change it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.reporting.compare import (
    MetricKey,
    MetricRow,
    Threshold,
    _higher_is_better,
    compare_runs,
    metric_values,
    paired_arrays,
    regressions,
)
from evalfleet.reporting.gate_policy import GatePolicy, MetricRule, TaskRule
from evalfleet.reporting.gate_power import (
    Power,
    mcnemar_power,
    paired_t_power,
    unpaired_power,
)
from evalfleet.reporting.runs import Run
from evalfleet.reporting.stats import MCNEMAR, PAIRED_T

GO, NO_GO, INCONCLUSIVE = "GO", "NO-GO", "INCONCLUSIVE"
PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"
#: The command's exit code for each verdict (2 is bad input).
EXIT_CODES = {GO: 0, NO_GO: 1, INCONCLUSIVE: 3}
GATE_VERSION = 1


@dataclass
class Check:
    """One judged condition of the policy."""

    task: str
    metric: str | None
    filter: str | None
    kind: str  # required | floor | regression
    tier: str
    status: str  # PASS | FAIL | INCONCLUSIVE | SKIPPED
    message: str
    baseline: float | None = None
    candidate: float | None = None
    diff: float | None = None
    se: float | None = None
    p_value: float | None = None
    test: str | None = None
    n: int | None = None
    floor: float | None = None
    max_regression: float | None = None
    power: float | None = None
    documents_needed: int | None = None
    higher_is_better: bool | None = None


def _name(task: str, key: MetricKey | None) -> str:
    return task if key is None else f"{task} {key[1]},{key[2]}"


def _p(value: float | None) -> str:
    return "N/A" if value is None else (f"{value:.2e}" if value < 1e-4 else f"{value:.4f}")


def _documents(run: Run, task: str, field: str = "effective") -> int | None:
    """Documents a task (or a group's leaf tasks) had in a run, from its ``n-samples``."""
    subtasks = (run.results.get("group_subtasks") or {}).get(task)
    if subtasks:
        counts = [_documents(run, t, field) for t in subtasks]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)
    entry = (run.results.get("n-samples") or {}).get(task) or {}
    value = entry.get(field)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class _Judge:
    """The checks of one policy on one pair of runs."""

    def __init__(self, policy: GatePolicy, a: Run, b: Run) -> None:
        self.policy, self.a, self.b = policy, a, b
        self.values_a, self.values_b = metric_values(a.results), metric_values(b.results)
        self.rows = {(r.task, r.metric, r.filter): r for r in compare_runs(a, b)}
        self.checks: list[Check] = []
        self.alpha = policy.alpha  # per test (see :meth:`correct`)

    def correct(self) -> int:
        """Set the per-test alpha of the policy's correction; returns the number of tests."""
        tests = sum(1 for rule in self.policy.tasks for metric in rule.metrics
                    if metric.max_regression is not None
                    and rule.task in self.a.task_names() and rule.task in self.b.task_names()
                    for key in self._keys(rule, metric)
                    if key in self.values_a and key in self.values_b)
        if self.policy.correction == "bonferroni" and tests > 1:
            self.alpha = self.policy.alpha / tests
        return tests

    def add(self, rule: TaskRule, key: MetricKey | None, kind: str, status: str, message: str,
            **numbers: Any) -> None:
        metric, filter_name = (key[1], key[2]) if key else (None, None)
        self.checks.append(Check(rule.task, metric, filter_name, kind, rule.tier, status,
                                 f"{_name(rule.task, key)}: {message}", **numbers))

    def task(self, rule: TaskRule) -> None:
        in_a, in_b = rule.task in self.a.task_names(), rule.task in self.b.task_names()
        lacking = [side for side, present in (("the baseline (A)", in_a),
                                              ("the candidate (B)", in_b)) if not present]
        if rule.required:
            self.add(rule, None, "required", FAIL if lacking else PASS,
                     f"required, missing from {' and '.join(lacking)}" if lacking
                     else "required, in both runs")
        elif lacking:
            self.add(rule, None, "required", SKIPPED,
                     f"not required and missing from {' and '.join(lacking)}: not gated")
        if in_a or in_b:
            for metric in rule.metrics:
                for key in self._keys(rule, metric):
                    self.metric(rule, metric, key, in_a and in_b)

    def _keys(self, rule: TaskRule, metric: MetricRule) -> list[MetricKey]:
        """The task's metric/filter pairs ``metric`` names, in either run; none is bad input."""
        gate = Threshold(metric.metric, metric.filter, 0.0)
        keys = [k for values in (self.values_a, self.values_b) for k in values
                if k[0] == rule.task and gate.matches(k[1], k[2])]
        if not keys:
            have = sorted({f"{m},{f}" for values in (self.values_a, self.values_b)
                           for t, m, f in values if t == rule.task})
            raise InvalidArgumentError(
                f"gate policy {self.policy.source}: tasks.{rule.task}.metrics.{metric.name}: "
                f"no run has this metric for {rule.task} (it has {', '.join(have) or 'none'})")
        return list(dict.fromkeys(keys))

    def metric(self, rule: TaskRule, metric: MetricRule, key: MetricKey, both_tasks: bool
               ) -> None:
        in_a, in_b = key in self.values_a, key in self.values_b
        if both_tasks and not (in_a and in_b):
            where = "the candidate (B)" if in_a else "the baseline (A)"
            self.add(rule, key, "required", FAIL if rule.required else SKIPPED,
                     f"missing from {where}" + ("" if rule.required else ": not gated"))
        if metric.floor is not None:
            self.floor(rule, key, metric.floor)
        if metric.max_regression is not None:
            if in_a and in_b:
                self.regression(rule, key, metric.max_regression)
            else:
                self.add(rule, key, "regression", SKIPPED, "not in both runs: no regression "
                         "to judge", max_regression=metric.max_regression)

    def floor(self, rule: TaskRule, key: MetricKey, floor: float) -> None:
        if key not in self.values_b:
            self.add(rule, key, "floor", SKIPPED, "the candidate (B) has no value",
                     floor=floor)
            return
        value, se = self.values_b[key]
        hib = _higher_is_better(self.b.results, key[0], key[1])
        if hib is None:
            hib = _higher_is_better(self.a.results, key[0], key[1])
        ok = value >= floor if hib is not False else value <= floor
        bound = "minimum" if hib is not False else "maximum"
        margin = "" if not se else f", {abs(value - floor) / se:.1f} stderr from it"
        message = (f"{value:.4f} meets the floor ({bound} {floor:.4f}{margin})" if ok else
                   f"{value:.4f} is worse than the floor ({bound} {floor:.4f}{margin})")
        self.add(rule, key, "floor", PASS if ok else FAIL, message, candidate=value, se=se,
                 floor=floor, higher_is_better=hib)

    def _power(self, row: MetricRow, delta: float) -> Power:
        alpha, target = self.alpha, self.policy.power
        if row.test.method in (MCNEMAR, PAIRED_T):
            pair = paired_arrays(self.a, self.b, row.task, row.metric, row.filter, row.a, row.b)
            assert pair is not None  # compare_runs paired these very rows
            power = mcnemar_power if row.test.method == MCNEMAR else paired_t_power
            return power(*pair, delta, alpha, target)
        documents = _documents(self.b, row.task) or _documents(self.a, row.task)
        return unpaired_power(row.test.se or 0.0, documents, delta, alpha, target)

    def regression(self, rule: TaskRule, key: MetricKey, delta: float) -> None:
        row = self.rows[key]
        test = row.test
        numbers: dict[str, Any] = {
            "baseline": row.a, "candidate": row.b, "diff": test.diff, "se": test.se,
            "p_value": test.p_value, "test": test.method, "n": test.n, "max_regression": delta,
            "higher_is_better": row.higher_is_better}
        found = (f"B-A {test.diff:+.4f}, p={_p(test.p_value)}, {test.method}"
                 + (f", {test.n} documents" if test.n else ""))
        alpha = self.alpha
        if regressions([row], [Threshold(key[1], key[2], delta)], alpha):
            self.add(rule, key, "regression", FAIL,
                     f"dropped {row.a:.4f} -> {row.b:.4f} ({found}): by more than "
                     f"max_regression {delta:g}, significant at alpha {alpha:g}", **numbers)
            return
        if test.p_value is None:
            self.add(rule, key, "regression", INCONCLUSIVE,
                     f"{row.a:.4f} -> {row.b:.4f} with no standard error to test it (log "
                     "samples in both runs, or keep bootstrap_iters > 0)", **numbers)
            return
        power = self._power(row, delta)
        numbers.update(power=power.power, documents_needed=power.documents_needed)
        detect = (f"a drop of {delta:g} is detected with probability {power.power:.2f} at "
                  f"alpha {alpha:g}")
        if row.worse_by <= delta and power.power >= self.policy.power:
            self.add(rule, key, "regression", PASS,
                     f"no drop beyond {delta:g} ({found}); {detect}", **numbers)
            return
        why = (f"dropped {row.worse_by:.4f}, more than {delta:g}, but not significantly"
               if row.worse_by > delta else f"no significant drop, but {detect}")
        self.add(rule, key, "regression", INCONCLUSIVE,
                 f"{why} ({found}); {self._needed(row.task, power)}", **numbers)

    def _needed(self, task: str, power: Power) -> str:
        if not power.documents_needed:
            return f"more documents are needed for power {self.policy.power:g}"
        text = (f"about {power.documents_needed} documents per run are needed for power "
                f"{self.policy.power:g}")
        total = _documents(self.b, task, "original") or _documents(self.a, task, "original")
        if total and power.documents_needed > total:
            text += f" (more than {task}'s {total}: raise max_regression or accept the risk)"
        elif total:
            text += f" (of {task}'s {total}: --limit {power.documents_needed})"
        return text


def verdict_of(checks: list[Check]) -> tuple[str, list[str]]:
    """The verdict and the reasons for it (the messages of the blocking checks that decide)."""
    blocking = [c for c in checks if c.tier == "blocking"]
    failed = [c.message for c in blocking if c.status == FAIL]
    unsure = [c.message for c in blocking if c.status == INCONCLUSIVE]
    if failed:
        return NO_GO, failed
    if unsure:
        return INCONCLUSIVE, unsure
    if not any(c.status == PASS for c in blocking):
        return INCONCLUSIVE, ["no blocking check could be judged (every gated task is missing "
                              "from a run, or the policy's tasks are all advisory)"]
    judged = sum(c.status == PASS for c in blocking)
    return GO, [f"all {judged} blocking check{'s' if judged != 1 else ''} passed"]


def evaluate_gate(policy: GatePolicy, a: Run, b: Run, *, baseline: str | None = None,
                  candidate: str | None = None) -> dict[str, Any]:
    """Judge run ``b`` (candidate) against ``a`` (baseline): the verdict document that
    ``evalfleet gate --json`` prints and the coordinator's EvaluateGate answers."""
    judge = _Judge(policy, a, b)
    tests = judge.correct()
    for rule in policy.tasks:
        judge.task(rule)
    verdict, reasons = verdict_of(judge.checks)
    counts = {s: sum(c.status == s for c in judge.checks)
              for s in (PASS, FAIL, INCONCLUSIVE, SKIPPED)}
    return {
        "gate_version": GATE_VERSION, "verdict": verdict, "exit_code": EXIT_CODES[verdict],
        "reasons": reasons, "counts": counts,
        "baseline": baseline or str(a.path), "candidate": candidate or str(b.path),
        "policy": {"source": policy.source, "sha256": policy.sha256, "alpha": policy.alpha,
                   "power": policy.power, "correction": policy.correction,
                   "regression_tests": tests, "alpha_per_test": judge.alpha},
        "checks": [asdict(c) for c in judge.checks],
    }
