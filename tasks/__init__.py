"""evalfleet's task engine: reads lm-eval 0.4.13 task YAMLs and builds the same requests.

The errors are imported with the package; everything else on first use (PEP 562), so that a
command importing only the errors (the CLI's top level) does not load the metrics' Numba
kernels before it has parsed its flags."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from evalfleet.tasks.errors import (
    DataNotFoundError,
    SampleIndexError,
    TaskError,
    TaskNotFoundError,
)

if TYPE_CHECKING:
    from evalfleet.tasks.filters import FilterPipeline
    from evalfleet.tasks.group import AggregateMetric, GroupSpec
    from evalfleet.tasks.listing import render_task_listing, show_task
    from evalfleet.tasks.manager import TaskEntry, TaskManager, TaskTree
    from evalfleet.tasks.metric_config import MetricConfig
    from evalfleet.tasks.protocol import EvalTask
    from evalfleet.tasks.request import Request
    from evalfleet.tasks.task import Task

#: Public name -> the module that defines it.
_LAZY = {
    "AggregateMetric": "group",
    "EvalTask": "protocol",
    "FilterPipeline": "filters",
    "GroupSpec": "group",
    "MetricConfig": "metric_config",
    "Request": "request",
    "Task": "task",
    "TaskEntry": "manager",
    "TaskManager": "manager",
    "TaskTree": "manager",
    "render_task_listing": "listing",
    "show_task": "listing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AggregateMetric",
    "DataNotFoundError",
    "EvalTask",
    "FilterPipeline",
    "GroupSpec",
    "MetricConfig",
    "Request",
    "SampleIndexError",
    "Task",
    "TaskEntry",
    "TaskError",
    "TaskManager",
    "TaskNotFoundError",
    "TaskTree",
    "render_task_listing",
    "show_task",
]
