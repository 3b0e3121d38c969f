"""TaskManager: index built-in and user task directories, resolve names into a TaskTree."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from evalfleet.tasks.config import build_config
from evalfleet.tasks.dataset import (
    configured_splits,
    default_data_dir,
    mirror_folder,
    missing_splits,
)
from evalfleet.tasks.errors import TaskError, TaskNotFoundError, config_error
from evalfleet.tasks.file_problems import broken_note, warn_if_duplicate
from evalfleet.tasks.formats import apply_format, split_format
from evalfleet.tasks.group import GROUP_KEYS, GroupSpec, check_aggregates, make_group_spec
from evalfleet.tasks.index import BrokenFile, IndexEntry, build_index, folders_of, index_file
from evalfleet.tasks.library import group_children, library_entries, not_installed_note
from evalfleet.tasks.protocol import EvalTask
from evalfleet.tasks.suggest import suggestions
from evalfleet.tasks.task import Task
from evalfleet.tasks.yaml_loader import resolve_functions

log = structlog.get_logger(__name__)
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"


@dataclass
class TaskEntry:
    """One listed name."""

    name: str
    kind: str  # "task" | "group" | "tag"
    yaml_path: Path | None
    dataset_path: str | None = None
    dataset_name: str | None = None
    in_mirror: bool = False  # the mirror holds every split the task reads (as configured)
    missing_splits: list[str] = field(default_factory=list)  # those it lacks
    output_type: str | None = None  # a task's lm-eval output type
    members: list[str] = field(default_factory=list)  # a tag's tasks / a group's children
    error: str | None = None  # why the name cannot be loaded (known without loading it)

    def check_mirror(self, data_dir: Path | None, splits: list[tuple[str, str]]) -> None:
        """Fill ``missing_splits`` and ``in_mirror`` for a task reading ``splits``."""
        folder = mirror_folder(data_dir, self.dataset_path, self.dataset_name)
        self.missing_splits = missing_splits(folder, splits)
        self.in_mirror = bool(folder and folder.is_dir()) and not self.missing_splits


@dataclass
class TaskTree:
    """Loaded tasks (leaves, stable order), groups, and the requested top-level names."""

    tasks: dict[str, EvalTask] = field(default_factory=dict)
    groups: dict[str, GroupSpec] = field(default_factory=dict)
    roots: list[str] = field(default_factory=list)

    def leaves_of(self, name: str) -> list[str]:
        """Leaf task names under a group (recursive), or ``[name]`` for a task."""
        if name in self.tasks and name not in self.groups:
            return [name]
        out: list[str] = []
        for child in self.groups[name].children:
            out += [x for x in self.leaves_of(child) if x not in out]
        return out


class TaskManager:
    """Finds tasks by name in lm-eval's installed task library (``include_library``, with the
    built-ins), ``tasks/builtin`` (whose names win over the library's) and ``include_paths``
    (which override both)."""

    def __init__(
        self,
        include_paths: Sequence[str | Path] = (),
        data_dir: str | Path | None = None,
        metadata: dict | None = None,
        include_builtin: bool = True,
        include_library: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.metadata = dict(metadata or {})
        roots = ([BUILTIN_DIR] if include_builtin else []) + [Path(p) for p in include_paths]
        # A folder named twice (the coordinator's and the job's) is read once, where it counts
        # last (later roots override earlier ones).
        last = {r.resolve(): i for i, r in enumerate(roots)}
        roots = [r for i, r in enumerate(roots) if last[r.resolve()] == i]
        for root in roots:
            if not root.exists():
                raise TaskError(f"{root}: include path does not exist")
        self.broken_files: list[BrokenFile] = []  # task files that could not be read
        self._roots = roots
        self._groups_building: list[tuple[str, Path | None]] = []  # to refuse a group cycle
        self._with_library = include_builtin and include_library
        library = library_entries() if self._with_library else {}
        self._index: dict[str, IndexEntry] = _overlay(library,
                                                      build_index(roots, self.broken_files))

    # ------------------------------------------------------------------ listing
    def names(self) -> list[str]:
        """All known names, sorted."""
        return sorted(self._index)

    def list(self) -> list[TaskEntry]:
        """Every indexed task, group and tag, sorted by name."""
        out = []
        for name in sorted(self._index):
            e = self._index[name]
            warn_if_duplicate(e)
            cfg = e.cfg or {}
            entry = TaskEntry(name=name, kind=e.kind, yaml_path=e.path,
                              error=str(e.error) if e.error else None)
            if e.facts is not None and e.cfg is None:
                out.append(self._library_listing(entry, e))
                continue
            if e.kind == "task":
                entry.dataset_path = cfg.get("dataset_path")
                entry.dataset_name = cfg.get("dataset_name")
                entry.check_mirror(self.data_dir, configured_splits(cfg))
                entry.output_type = cfg.get("output_type")
            elif e.kind == "tag":
                entry.members = sorted(e.members)
            else:
                entry.members = group_children(cfg)
            out.append(entry)
        return out

    def _library_listing(self, entry: TaskEntry, indexed: IndexEntry) -> TaskEntry:
        """A library name's row from the cached index (its file is not read)."""
        facts = indexed.facts
        if entry.kind == "task":
            entry.error = entry.error or facts.cannot_load
            entry.dataset_path, entry.dataset_name = facts.dataset_path, facts.dataset_name
            entry.output_type = facts.output_type
            entry.check_mirror(self.data_dir, list(facts.splits))
        elif entry.kind == "tag":
            entry.members = sorted(indexed.members)
        else:
            entry.members = list(facts.children)
        return entry

    def _full(self, entry: IndexEntry) -> IndexEntry:
        """A library entry with its configuration read from its file (other entries as they
        are); kept, so that a file is read once per manager."""
        if entry.facts is None or entry.cfg is not None or entry.kind == "tag" \
                or entry.error is not None or entry.path is None:
            return entry
        local: dict[str, IndexEntry] = {}
        index_file(entry.path, local, folders_of([entry.path]))
        full = local.get(entry.name)
        if full is None or full.kind != entry.kind:
            raise config_error(entry.path, entry.kind, f"no longer defines {entry.name!r}; "
                               "the task library changed since it was indexed")
        full.facts = entry.facts
        if self._index.get(entry.name) is entry:
            self._index[entry.name] = full
        return full

    # ------------------------------------------------------------------ loading
    def load(self, names: Sequence[str]) -> TaskTree:
        """Resolve task, group and tag names (or YAML file paths) into a TaskTree."""
        if isinstance(names, str):
            names = [names]
        tree = TaskTree()
        registry = dict(self._index)
        for spec in names:
            base, fmt = split_format(spec, registry)  # "arc_easy@generate": a task format
            entry = self._lookup(base, registry)
            into = TaskTree() if fmt else tree
            built = self._build(entry, None, registry, into)
            if fmt:
                built = apply_format(fmt, built, into, tree, self.data_dir, self.metadata)
            for item in built if isinstance(built, list) else [built]:
                tree.roots.append(item)
        return tree

    def _lookup(self, spec: str, registry: dict[str, IndexEntry]) -> IndexEntry:
        if spec in registry:
            return registry[spec]
        path = Path(spec)
        if spec.endswith(".yaml") and path.is_file():
            local: dict[str, IndexEntry] = {}
            index_file(path.resolve(), local, folders_of([*self._roots, path]))
            for entry in local.values():
                if entry.kind != "tag":
                    registry[entry.name] = entry
                    return entry
            raise config_error(path, None, "neither 'task' nor 'group' is set")
        close = suggestions(spec, registry)
        note = broken_note(spec, self.broken_files)
        if self._with_library:
            note += not_installed_note()
        raise TaskNotFoundError(spec, close, note)

    def _build(
        self,
        entry: IndexEntry,
        overrides: dict[str, Any] | None,
        registry: dict[str, IndexEntry],
        tree: TaskTree,
    ) -> str | list[str]:
        """Build an entry into ``tree``; returns the name(s) it contributes."""
        entry = self._full(entry)
        if entry.error is not None:
            raise entry.error
        warn_if_duplicate(entry)
        if entry.kind == "tag":
            names = []
            for name in sorted(entry.members):
                if name in registry:
                    names.append(self._build_task(registry[name], overrides, tree))
            return names
        if entry.kind == "group":
            cycle = [n for n, _ in self._groups_building]
            if entry.name in cycle:
                parent = self._groups_building[-1][1]
                path = " -> ".join([*cycle[cycle.index(entry.name):], entry.name])
                raise config_error(parent, "task", f"group {entry.name!r} contains itself "
                                   f"({path}); remove it from its own task list")
            raw = copy.deepcopy(entry.cfg or {})
            self._groups_building.append((entry.name, entry.path))
            try:
                return self._build_group(entry.name, raw, overrides, registry, tree, entry.path)
            finally:
                self._groups_building.pop()
        return self._build_task(entry, overrides, tree)

    def _task_config(self, entry: IndexEntry, overrides: dict[str, Any] | None) -> dict[str, Any]:
        cfg = copy.deepcopy(entry.cfg or {})
        if overrides:
            cfg = {**cfg, **overrides}
        meta = cfg.get("metadata", {})
        cfg["metadata"] = (meta if isinstance(meta, dict) else {"_metadata": meta}) | self.metadata
        cfg["metadata"]["config_source"] = str(entry.path) if entry.path else "inline"
        return cfg

    def _build_task(
        self, entry: IndexEntry, overrides: dict[str, Any] | None, tree: TaskTree
    ) -> str:
        entry = self._full(entry)
        if entry.error is not None:
            raise entry.error
        warn_if_duplicate(entry)
        raw = self._task_config(entry, overrides)
        if "class" in raw:
            return self._add_class_task(raw, entry.path, tree)
        return self._add_task(raw, entry.path, tree)

    def _add_class_task(self, raw: dict[str, Any], source: Path | None, tree: TaskTree) -> str:
        """A YAML ``class: !function module.Class`` task (lm-eval's Python-task route)."""
        from evalfleet.tasks.class_task import ClassTask, instantiate

        cfg = {k: v for k, v in raw.items() if k not in ("tag", "group", "task_list")}
        if not isinstance(cfg.get("task"), str):
            raise config_error(source, "task", "missing or not a string")
        cfg = resolve_functions(cfg)
        task = ClassTask(instantiate(cfg["class"], cfg, self.data_dir, source), cfg, source)
        if task.name not in tree.tasks:
            tree.tasks[task.name] = task  # type: ignore[assignment]
        return task.name

    def _add_task(self, raw: dict[str, Any], source: Path | None, tree: TaskTree) -> str:
        task = Task(build_config(raw, source), self.data_dir, self.metadata)
        if task.name in tree.tasks:
            log.debug("task loaded twice; keeping the first", task=task.name)
            return task.name
        tree.tasks[task.name] = task
        return task.name

    def _build_group(
        self,
        name: str,
        raw: dict[str, Any],
        overrides: dict[str, Any] | None,
        registry: dict[str, IndexEntry],
        tree: TaskTree,
        source: Path | None,
    ) -> str:
        spec = make_group_spec(name, raw, self.metadata, source)
        task_overrides = {k: v for k, v in raw.items() if k not in GROUP_KEYS and k != "tag"}
        merged = {**task_overrides, **(overrides or {})}
        members = raw.get("task")
        members = [members] if isinstance(members, str) else (members or [])
        if not isinstance(members, list):
            raise config_error(source, "task", "expected a list of task/group names")
        if not members:
            raise config_error(source, "task", f"group {name!r} has no tasks; list its tasks, "
                               "groups or tags under 'task:'")
        tree.groups[name] = spec
        for item in members:
            spec.children += self._as_list(
                self._build_member(item, name, merged, registry, tree, source)
            )
        check_aggregates(spec, [tree.tasks[t] for t in tree.leaves_of(name) if t in tree.tasks])
        return name

    @staticmethod
    def _as_list(value: str | list[str]) -> list[str]:
        return value if isinstance(value, list) else [value]

    def _build_member(
        self,
        item: Any,
        group: str,
        overrides: dict[str, Any],
        registry: dict[str, IndexEntry],
        tree: TaskTree,
        source: Path | None,
    ) -> str | list[str]:
        if isinstance(item, str):
            base, item_overrides = item, overrides
        elif isinstance(item, dict) and "group" in item:
            name = item["group"]
            if name in registry:
                extra = {k: v for k, v in item.items() if k != "group"}
                return self._build(registry[name], {**overrides, **extra}, registry, tree)
            return self._build_group(
                f"{group}::{name}", copy.deepcopy(item), overrides, registry, tree, source
            )
        elif isinstance(item, dict) and "task" in item:
            base, item_overrides = item["task"], {**overrides, **item}
        else:
            raise config_error(source, "task", f"unsupported member {item!r} in group {group!r}")
        if not isinstance(base, str):
            raise config_error(source, "task", f"member {item!r} of group {group!r}: expected a "
                               "task, group or tag name")
        if base not in registry:
            if isinstance(item, str):
                close = difflib.get_close_matches(base, list(registry), n=5, cutoff=0.6)
                raise TaskNotFoundError(base, close)
            cfg = {**item_overrides, "task": f"{group}::{base}"}
            cfg["metadata"] = (cfg.get("metadata") or {}) | self.metadata
            return self._add_task(cfg, source, tree)
        child = registry[base]
        # ``- task: mmlu`` with overrides: they apply to the group's (or tag's) tasks, whose
        # names stay their own (lm-eval); the member's ``task`` is not one of them.
        shared = {k: v for k, v in item_overrides.items() if k != "task"}
        if child.kind == "group":
            return self._build(child, shared, registry, tree)
        if child.kind == "tag":
            return [
                self._build_task(registry[n], {**shared, "task": n}, tree)
                for n in sorted(child.members)
            ]
        return self._build_task(child, {**shared, "task": base}, tree)


def _overlay(library: dict[str, IndexEntry], local: dict[str, IndexEntry]) -> dict[str, IndexEntry]:
    """The library's names overridden by the built-ins' and include paths' (a tag both define
    has both's tasks); a library name a local file also defines is not a duplicate to warn
    about: the local one wins, as documented."""
    out = dict(library)
    for name, entry in local.items():
        previous = out.get(name)
        if entry.kind == "tag" and previous is not None and previous.kind == "tag":
            entry = IndexEntry(name=name, kind="tag", members=previous.members | entry.members)
        out[name] = entry
    return out
