"""Scan task directories into a name -> entry index (tasks, groups, tags)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog

from evalfleet.tasks.errors import TaskError, config_error
from evalfleet.tasks.yaml_loader import describe, load_config, read_yaml

log = structlog.get_logger(__name__)
_IGNORE_DIRS = {"__pycache__", ".ipynb_checkpoints"}


@dataclass
class IndexEntry:
    """One indexed name: kind is 'task', 'group' or 'tag'."""

    name: str
    kind: str
    path: Path | None = None
    cfg: dict[str, Any] | None = None
    members: set[str] = field(default_factory=set)  # a tag's tasks
    error: TaskError | None = None  # include/merge error, raised when loaded
    shadowed: list[Path] = field(default_factory=list)  # other files defining the same name
    facts: Any = None  # a library entry's cached listing (tasks/library.py); cfg read when named


@dataclass(frozen=True)
class BrokenFile:
    """A task file the index could not read (its error names the file and the problem)."""

    path: Path
    error: TaskError

    def __str__(self) -> str:
        return str(self.error)


def _kind(cfg: dict[str, Any]) -> str | None:
    if "group" in cfg:
        return "group"
    if "task" in cfg:
        return "task"
    return None


def _yaml_files(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.glob("**/*.yaml") if not _IGNORE_DIRS & set(p.parts)),
        key=lambda p: p.as_posix(),
    )


def _tags(cfg: dict[str, Any], path: Path) -> list[str]:
    """A file's ``tag:`` as a list of names; TaskError naming the file and key otherwise."""
    tags = cfg.get("tag") or []
    tags = [tags] if isinstance(tags, str) else tags
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise config_error(path, "tag", f"expected a tag name or a list of names, got "
                           f"{type(cfg['tag']).__name__} {cfg['tag']!r}")
    return tags


def index_file(path: Path, out: dict[str, IndexEntry],
               roots: Sequence[Path] | None = None) -> None:
    """Add one YAML file's task/group (and its tags) to ``out``; first one wins (the others are
    remembered in its ``shadowed``). ``roots``: the task folders its ``include:`` may read from.
    TaskError, naming the file, when it cannot be read or its name is not a string."""
    raw = read_yaml(path)
    error = None
    try:
        cfg = load_config(path, roots)
    except TaskError as err:
        cfg, error = raw, err
    kind = _kind(cfg)
    if kind is None:
        return
    name = cfg[kind]
    if not isinstance(name, str) or not name:
        raise config_error(path, kind, f"expected a {kind} name (a string), got "
                           f"{type(name).__name__} {describe(name)!r}")
    if name in out:
        if out[name].path is not None:
            out[name].shadowed.append(path)
        log.debug("duplicate task name skipped", name=name, path=str(path))
        return
    tags: list[str] = []
    try:
        tags = _tags(cfg, path)
    except TaskError as err:
        error = error or err
    out[name] = IndexEntry(name=name, kind=kind, path=path, cfg=cfg, error=error)
    if kind == "task":
        for tag in tags:
            entry = out.setdefault(tag, IndexEntry(name=tag, kind="tag"))
            if entry.kind == "tag":
                entry.members.add(name)


def folders_of(roots: Iterable[Path]) -> list[Path]:
    """The task folders an ``include:`` may read: those of ``roots`` (a file root stands for
    its folder), resolved, and lm-eval's installed task library where lm-eval is installed
    (task files that extend lm-eval's own include them)."""
    folders = [(r if r.is_dir() else r.parent).resolve() for r in roots]
    library = lmeval_task_library()
    return folders + ([library] if library is not None else [])


@lru_cache(maxsize=1)
def lmeval_task_library() -> Path | None:
    """lm-eval's installed ``lm_eval/tasks`` folder (found without importing lm-eval)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    return folder.resolve() if folder.is_dir() else None


def build_index(
    roots: Iterable[Path], broken: list[BrokenFile] | None = None
) -> dict[str, IndexEntry]:
    """Index every YAML under ``roots``; later roots override earlier ones (the files they
    override are kept in the winner's ``shadowed``). Files that cannot be read go to
    ``broken``."""
    index: dict[str, IndexEntry] = {}
    roots = list(roots)
    allowed = folders_of(roots)
    for root in roots:
        local: dict[str, IndexEntry] = {}
        files = [root] if root.is_file() else _yaml_files(root)
        for path in files:
            try:
                index_file(path, local, allowed)
            except TaskError as err:
                if broken is not None:
                    broken.append(BrokenFile(path, err))
                log.debug("skipping unreadable task file", path=str(path), error=str(err))
        for name, entry in local.items():
            previous = index.get(name)
            if entry.kind == "tag" and previous is not None and previous.kind == "tag":
                previous.members |= entry.members
                continue
            if previous is not None:
                log.debug("task overridden", name=name, by=str(entry.path), was=str(previous.path))
                if previous.path not in (None, entry.path) and entry.path is not None:
                    entry.shadowed += [previous.path, *previous.shadowed]
            index[name] = entry
    return index
