"""A release gate's policy: which tasks must be there, the worst value each metric may have, and
the largest regression against the baseline it may show.

The policy is a YAML file (``examples/gate.yaml``)::

    alpha: 0.05              # significance level of the paired tests (default 0.05)
    power: 0.8               # power a "no regression" finding needs (default 0.8)
    correction: none         # or bonferroni: alpha / (number of regression tests)
    tasks:
      arc_easy:              # a task or group name, as in the results file
        required: true       # missing from either run: NO-GO (default false: skipped)
        tier: blocking       # or advisory: reported, never changes the verdict
        metrics:
          acc:               # METRIC (every filter) or METRIC,FILTER
            floor: 0.25      # the worst acceptable candidate value
            max_regression: 0.05   # the largest drop from the baseline accepted (> 0)

Every mistake is one :class:`InvalidArgumentError` naming the source and the key.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import yaml

from evalfleet.common.errors import InvalidArgumentError

TIERS = ("blocking", "advisory")
CORRECTIONS = ("none", "bonferroni")
#: The most bytes a policy may have (a policy is a few lines; this bounds what a client sends).
MAX_POLICY_BYTES = 1 << 20
_TOP_KEYS = ("alpha", "power", "correction", "tasks")
_TASK_KEYS = ("required", "tier", "metrics")
_METRIC_KEYS = ("floor", "max_regression")


@dataclass(frozen=True)
class MetricRule:
    """What one metric (every filter, or one) of a task must satisfy."""

    metric: str
    filter: str | None
    floor: float | None = None
    max_regression: float | None = None

    @property
    def name(self) -> str:
        """``metric`` or ``metric,filter`` as the policy wrote it."""
        return self.metric if self.filter is None else f"{self.metric},{self.filter}"


@dataclass(frozen=True)
class TaskRule:
    """A task (or group) of the policy."""

    task: str
    required: bool = False
    tier: str = "blocking"
    metrics: tuple[MetricRule, ...] = ()


@dataclass(frozen=True)
class GatePolicy:
    """A parsed policy and the sha256 of the bytes it was read from."""

    tasks: tuple[TaskRule, ...]
    alpha: float = 0.05
    power: float = 0.8
    sha256: str = ""
    source: str = "<policy>"
    #: "bonferroni": each regression test at alpha / (the number of them); "none": at alpha
    correction: str = "none"


def _fail(source: str, where: str, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"gate policy {source}: {where}: {message}")


def _mapping(value: Any, source: str, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(source, where, f"expected a mapping with {', '.join(keys)}")
    unknown = [str(k) for k in value if k not in keys]
    if unknown:
        raise _fail(source, where, f"unknown key {', '.join(unknown)} (known: "
                                   f"{', '.join(keys)})")
    return value


def _number(value: Any, source: str, where: str, *, low: float, high: float | None,
            open_low: bool, what: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and (high is None or value < high)
    if not ok:
        raise _fail(source, where, f"must be {what} (got {value!r})")
    return float(value)


def _metric_rule(name: Any, raw: Any, source: str, where: str) -> MetricRule:
    metric, _, filter_name = str(name).partition(",")
    if not metric.strip():
        raise _fail(source, where, "a metric name is empty")
    raw = _mapping(raw if raw is not None else {}, source, where, _METRIC_KEYS)
    floor = raw.get("floor")
    if floor is not None:
        floor = _number(floor, source, f"{where}.floor", low=-math.inf, high=None,
                        open_low=True, what="a number")
    most = raw.get("max_regression")
    if most is not None:
        most = _number(most, source, f"{where}.max_regression", low=0.0, high=None,
                       open_low=True, what="a number > 0, the largest drop accepted in the "
                                           "metric's units (it also sizes the test)")
    if floor is None and most is None:
        raise _fail(source, where, "give floor and/or max_regression")
    return MetricRule(metric.strip(), filter_name.strip() or None, floor, most)


def _task_rule(name: Any, raw: Any, source: str) -> TaskRule:
    where = f"tasks.{name}"
    raw = _mapping(raw if raw is not None else {}, source, where, _TASK_KEYS)
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise _fail(source, f"{where}.required", f"must be true or false (got {required!r})")
    tier = raw.get("tier", "blocking")
    if tier not in TIERS:
        raise _fail(source, f"{where}.tier", f"must be one of {', '.join(TIERS)} "
                                              f"(got {tier!r})")
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise _fail(source, f"{where}.metrics", "expected a mapping METRIC: {floor: ..., "
                                                 "max_regression: ...}")
    rules = tuple(_metric_rule(m, r, source, f"{where}.metrics.{m}") for m, r in metrics.items())
    if not rules and not required:
        raise _fail(source, where, "gates nothing: set required: true or give metrics")
    return TaskRule(str(name), required, tier, rules)


def parse_policy(text: bytes | str, source: str = "<policy>") -> GatePolicy:
    """Parse and check a policy; ``sha256`` is of ``text``'s bytes (UTF-8 for a str)."""
    data_bytes = text.encode("utf-8") if isinstance(text, str) else text
    if len(data_bytes) > MAX_POLICY_BYTES:
        raise _fail(source, "size", f"{len(data_bytes)} bytes is over {MAX_POLICY_BYTES}")
    try:
        data = yaml.safe_load(data_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise _fail(source, "text", "is not UTF-8") from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(source, "YAML", first) from None
    data = _mapping(data, source, "top level", _TOP_KEYS)
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise _fail(source, "tasks", "expected a mapping of task names to rules (see "
                                     "examples/gate.yaml)")
    alpha = _number(data.get("alpha", 0.05), source, "alpha", low=0.0, high=1.0,
                    open_low=True, what="between 0 and 1")
    power = _number(data.get("power", 0.8), source, "power", low=0.0, high=1.0,
                    open_low=True, what="between 0 and 1")
    correction = data.get("correction", "none")
    if correction not in CORRECTIONS:
        raise _fail(source, "correction", f"must be one of {', '.join(CORRECTIONS)} "
                                          f"(got {correction!r})")
    return GatePolicy(tuple(_task_rule(n, r, source) for n, r in tasks.items()), alpha, power,
                      hashlib.sha256(data_bytes).hexdigest(), source, correction)
