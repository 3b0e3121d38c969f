"""Task formats: ``--tasks NAME@generate`` / ``NAME@cot`` ask a multiple-choice task as a
generation task, as lm-eval 0.5.0.dev1's formats do (``specs.py``), scored by ``exact_match``
on the answer read from the response, with the share of ``unparsed`` responses.

``TaskManager.load`` splits ``name@format`` (``split_format``), builds the task as usual and
hands it here (``apply_format``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evalfleet.tasks.errors import TaskNotFoundError, config_error
from evalfleet.tasks.formats.specs import FORMATS, FormatSpec
from evalfleet.tasks.formats.task import FormattedTask


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
    """Put the format of each task ``built`` into ``scratch`` into ``tree``; returns the
    formatted names. A group is refused: its aggregates name its tasks' own metrics."""
    names = built if isinstance(built, list) else [built]
    for name in names:
        if name in scratch.groups:
            group = scratch.groups[name]
            leaves = scratch.leaves_of(name)
            example = ",".join(f"{t}@{fmt}" for t in leaves[:3]) + (",..." if leaves[3:] else "")
            raise config_error(getattr(group, "source", None), None,
                               f"@{fmt} applies to tasks and tags, not to group {name!r} "
                               f"(its aggregates are of its tasks' own metrics): name its "
                               f"tasks instead, e.g. --tasks {example}")
    out = []
    for name in names:
        task = FormattedTask(scratch.tasks[name], FORMATS[fmt], data_dir, metadata)
        tree.tasks.setdefault(task.name, task)
        out.append(task.name)
    return out if isinstance(built, list) else out[0]


__all__ = ["FORMATS", "FormatSpec", "FormattedTask", "apply_format", "split_format"]
