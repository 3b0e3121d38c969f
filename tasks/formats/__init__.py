"""Task formats: ``--tasks NAME@generate`` / ``NAME@cot`` ask a multiple-choice task as a
generation task, as lm-eval 0.5.0.dev1's formats do (``specs.py``), scored by ``exact_match``
on the answer read from the response, with the share of ``unparsed`` responses.

``TaskManager.load`` splits ``name@format`` (``split_format``), builds the task, tag or group
as usual and hands it here (``apply_format``); a group's format is the group over its tasks'
formats, aggregating their ``exact_match`` and ``unparsed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evalfleet.tasks.errors import TaskNotFoundError
from evalfleet.tasks.formats.specs import FORMATS, FormatSpec
from evalfleet.tasks.formats.task import FormattedTask
from evalfleet.tasks.group import AggregateMetric, GroupSpec

#: What a formatted group aggregates: its formatted tasks' metrics (``task.METRICS``).
FORMAT_METRICS = ("exact_match", "unparsed")


def split_format(spec: str, known: Mapping[str, Any]) -> tuple[str, str | None]:
    """``("arc_easy", "generate")`` for ``"arc_easy@generate"``; a name the index knows as it
    is (or without ``@``) has no format. An unknown format is NOT_FOUND with the known ones."""
    if spec in known or "@" not in spec:
        return spec, None
    base, fmt = spec.rsplit("@", 1)
    if fmt not in FORMATS:
        raise TaskNotFoundError(spec, [f"{base}@{name}" for name in sorted(FORMATS)],
                                f" (unknown task format '@{fmt}'; the formats are "
                                f"{', '.join('@' + n for n in sorted(FORMATS))})")
    return base, fmt


def apply_format(fmt: str, built: str | list[str], scratch: Any, tree: Any,
                 data_dir: Path | None, metadata: dict | None) -> str | list[str]:
    """Put the format of each task or group ``built`` into ``scratch`` into ``tree``; returns
    the formatted names. A group becomes ``<group>@<format>`` over its members' formats
    (``_formatted_group``)."""
    names = built if isinstance(built, list) else [built]
    out = [_formatted(name, fmt, scratch, tree, data_dir, metadata) for name in names]
    return out if isinstance(built, list) else out[0]


def _formatted(name: str, fmt: str, scratch: Any, tree: Any, data_dir: Path | None,
               metadata: dict | None) -> str:
    if name in scratch.groups:
        return _formatted_group(scratch.groups[name], fmt, scratch, tree, data_dir, metadata)
    task = FormattedTask(scratch.tasks[name], FORMATS[fmt], data_dir, metadata)
    tree.tasks.setdefault(task.name, task)
    return task.name


def _formatted_group(group: GroupSpec, fmt: str, scratch: Any, tree: Any,
                     data_dir: Path | None, metadata: dict | None) -> str:
    """``group@fmt``: the group's members in the format (subgroups likewise), aggregated as
    the group aggregates its own tasks' metrics (mean, weighted by size where it weights)
    but over the format's metrics, ``exact_match`` and ``unparsed``, for every filter; a
    group that aggregates nothing still aggregates nothing."""
    name = f"{group.name}@{fmt}"
    if name in tree.groups:
        return name
    weight = all(a.weight_by_size for a in group.aggregate_metric_list)
    spec = dataclasses.replace(
        group, name=name, alias=f"{group.alias}@{fmt}" if group.alias else None, children=[],
        aggregate_metric_list=[AggregateMetric(metric=m, weight_by_size=weight)
                               for m in FORMAT_METRICS] if group.has_aggregation else [])
    tree.groups[name] = spec
    spec.children = [_formatted(c, fmt, scratch, tree, data_dir, metadata)
                     for c in group.children]
    return name


__all__ = ["FORMATS", "FormatSpec", "FormattedTask", "apply_format", "split_format"]
