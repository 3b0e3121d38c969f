"""Metric configuration of a task (metric_list entries and lm-eval's defaults)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evalfleet.tasks.errors import config_error

#: default metrics per output type (lm-eval's DEFAULT_METRIC_REGISTRY)
DEFAULT_METRICS: dict[str, list[str]] = {
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "multiple_choice": ["acc", "acc_norm"],
    "generate_until": ["exact_match"],
}

#: metric name -> (default aggregation, higher_is_better), as registered in lm-eval
METRIC_DEFAULTS: dict[str, tuple[str, bool]] = {
    "acc": ("mean", True),
    "acc_norm": ("mean", True),
    "acc_mutual_info": ("mean", True),
    "acc_bytes": ("mean", True),
    "acc_all": ("mean", True),
    "exact_match": ("mean", True),
    "likelihood": ("mean", True),
    "perplexity": ("perplexity", False),
    "word_perplexity": ("weighted_perplexity", False),
    "byte_perplexity": ("weighted_perplexity", False),
    "bits_per_byte": ("bits_per_byte", False),
    "brier_score": ("brier_score", False),
    "bypass": ("bypass", True),
    "mcc": ("matthews_corrcoef", True),
    "f1": ("f1", True),
    "bleu": ("bleu", True),
    "chrf": ("chrf", True),
    "chrf++": ("chrf++", True),
    "ter": ("ter", False),
}

_RESERVED = ("metric", "aggregation", "higher_is_better", "hf_evaluate")


@dataclass
class MetricConfig:
    """One metric of a task: name, aggregation (name or callable), direction and kwargs."""

    name: str
    aggregation: str | Callable | None
    higher_is_better: bool | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    hf_evaluate: bool = False
    fn: Callable | None = None  # a callable given as `metric: !function ...`


def default_metric(name: str) -> MetricConfig:
    """The registry defaults for a metric name."""
    agg, hib = METRIC_DEFAULTS.get(name, (None, None))
    return MetricConfig(name=name, aggregation=agg, higher_is_better=hib)


def parse_metric_list(raw: Any, output_type: str, source: Any) -> list[MetricConfig]:
    """Normalize ``metric_list`` (or the output type's defaults when absent)."""
    if raw is None:
        return [default_metric(n) for n in DEFAULT_METRICS[output_type]]
    if not isinstance(raw, list):
        raise config_error(source, "metric_list", "expected a list of {metric: ...} entries")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or "metric" not in entry:
            raise config_error(source, f"metric_list[{i}]", "entry must be a mapping with 'metric'")
        metric = entry["metric"]
        fn = None
        if callable(metric):
            fn, metric = metric, metric.__name__
        elif not isinstance(metric, str):
            raise config_error(
                source, f"metric_list[{i}].metric", f"expected a name, got {metric!r}"
            )
        base = default_metric(metric)
        out.append(
            MetricConfig(
                name=metric,
                aggregation=entry.get("aggregation", base.aggregation),
                higher_is_better=entry.get("higher_is_better", base.higher_is_better),
                kwargs={k: v for k, v in entry.items() if k not in _RESERVED},
                hf_evaluate=entry.get("hf_evaluate") is True,
                fn=fn,
            )
        )
    return out
