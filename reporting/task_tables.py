"""``evalfleet eval --tasks list|list_groups|list_tags|list_subtasks``: the markdown tables
lm-eval prints for ``lm-eval ls tasks|groups|tags|subtasks`` (its ``list_all_tasks``)."""

from __future__ import annotations

from pathlib import Path

from evalfleet.tasks import TaskManager


def _location(path: Path | None) -> str:
    """lm-eval shortens paths below its task folder; evalfleet's built-ins likewise."""
    if path is None:
        return "---"
    text = str(path)
    for marker in ("tasks/builtin/", "lm_eval/tasks/"):  # the built-ins, lm-eval's library
        if marker in text:
            return marker + text.split(marker)[-1]
    return text


def task_tables(manager: TaskManager, *, list_groups: bool = True, list_tags: bool = True,
                list_subtasks: bool = True) -> str:
    """Groups (name, config location), tags, and tasks (name, location, output type)."""
    from evalfleet.reporting.plain_markdown import markdown_table

    entries = manager.list()
    out = "\n"
    if list_groups:
        out += markdown_table(["Group", "Config Location"],
                              [[e.name, _location(e.yaml_path)] for e in entries
                               if e.kind == "group"]) + "\n\n"
    if list_tags:
        out += markdown_table(["Tag"], [[e.name] for e in entries if e.kind == "tag"]) + "\n\n"
    if list_subtasks:
        out += markdown_table(["Task", "Config Location", "Output Type"],
                              [[e.name, _location(e.yaml_path), e.output_type or ""]
                               for e in entries if e.kind == "task"]) + "\n\n"
    return out
