"""Helpers for the ``evalfleet tasks list`` / ``tasks show`` CLI commands."""

from __future__ import annotations

from typing import Any

from evalfleet.tasks.manager import TaskManager


def render_task_listing(manager: TaskManager) -> list[dict[str, Any]]:
    """One JSON-friendly row per task, group and tag."""
    return [
        {
            "name": e.name,
            "kind": e.kind,
            "yaml_path": str(e.yaml_path) if e.yaml_path else None,
            "dataset_path": e.dataset_path,
            "dataset_name": e.dataset_name,
            "in_mirror": e.in_mirror,
            "missing_splits": e.missing_splits,
            "output_type": e.output_type,
            "members": e.members,
            "error": e.error,
        }
        for e in manager.list()
    ]


def show_task(manager: TaskManager, name: str, num_fewshot: int | None = None) -> str:
    """Describe a task (or a group's tasks) with its first doc's prompt and target."""
    tree = manager.load([name])
    parts = []
    for group in tree.groups.values():
        parts.append(f"group {group.name} (version {group.version}): {', '.join(group.children)}")
    for task in tree.tasks.values():
        requests = task.build_requests(limit=1, num_fewshot=num_fewshot)
        doc_id, doc = task.eval_docs(1)[0]
        lines = [
            f"task {task.name} (version {task.version}, output_type {task.output_type}, "
            f"{task.effective_num_fewshot}-shot)"]
        lines += [f"  {line}" for line in task.origin_lines()]
        lines += [
            f"  metrics: {', '.join(m.name for m in task.metric_list)}",
            f"  target: {task.doc_target(doc)!r}",
        ]
        choices = task.doc_choices(doc)
        if choices is not None:
            lines.append(f"  choices: {choices!r}")
        for req in requests:
            lines.append(f"  request {req.idx} ({req.request_type}):")
            for arg in req.arguments:
                lines.append(
                    "    | "
                    + (arg if isinstance(arg, str) else repr(arg)).replace("\n", "\n    | ")
                )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
