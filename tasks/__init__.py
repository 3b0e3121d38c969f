"""evalfleet's task engine: reads lm-eval 0.4.13 task YAMLs and builds the same requests."""

from evalfleet.tasks.errors import (
    DataNotFoundError,
    SampleIndexError,
    TaskError,
    TaskNotFoundError,
)
from evalfleet.tasks.filters import FilterPipeline
from evalfleet.tasks.group import AggregateMetric, GroupSpec
from evalfleet.tasks.listing import render_task_listing, show_task
from evalfleet.tasks.manager import TaskEntry, TaskManager, TaskTree
from evalfleet.tasks.metric_config import MetricConfig
from evalfleet.tasks.request import Request
from evalfleet.tasks.task import Task

__all__ = [
    "AggregateMetric",
    "DataNotFoundError",
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
