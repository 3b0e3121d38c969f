"""lm-eval's installed task library as a cached name index.

Indexing lm-eval's ~13,000 task files takes ~20 s, so the index is kept on disk at
``$EVALFLEET_TASK_INDEX_DIR`` (default ``$EVALFLEET_CACHE_DIR/task-index``) as
``lm_eval-<version>-<hash of the folder path>-v<format>.json``, rebuilt when lm-eval's version
or folder changes or the file is unreadable, and written atomically. Per name it holds what
``tasks list`` shows (kind, file, tag members, group children, dataset, output type, the splits
read, why it cannot load where the index can tell); a task's full configuration is read from its
file only when it is named."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog

from evalfleet.common.paths import cache_dir
from evalfleet.common.request_kind import OutputType
from evalfleet.tasks.dataset import configured_splits
from evalfleet.tasks.errors import TaskError
from evalfleet.tasks.index import IndexEntry, build_index, lmeval_task_library

log = structlog.get_logger(__name__)
#: Bumped when the cached file's layout changes (an old file is then rebuilt).
CACHE_FORMAT = 3
INDEX_DIR_ENV = "EVALFLEET_TASK_INDEX_DIR"


@dataclass(frozen=True)
class LibraryFacts:
    """What the index keeps of one library name (enough to list it without reading its file)."""

    dataset_path: str | None = None
    dataset_name: str | None = None
    output_type: str | None = None
    splits: tuple[tuple[str, str], ...] = ()  # (key, split) pairs the task reads
    children: tuple[str, ...] = ()  # a group's members
    cannot_load: str | None = None  # why the task cannot load, where the index can tell


def lmeval_version() -> str | None:
    """The installed lm-eval's version (None when it is not installed)."""
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return None


def not_installed_note() -> str:
    """The part of an "unknown task" message saying lm-eval's library is not installed (empty
    when it is)."""
    if lmeval_task_library() is not None and lmeval_version() is not None:
        return ""
    return (" (lm-eval's task library is not installed: `pip install evalfleet[tasks]` makes "
            "its task, group and tag names known)")


def index_dir() -> Path:
    """Where library indexes are cached."""
    env = os.environ.get(INDEX_DIR_ENV)
    return Path(env) if env else cache_dir() / "task-index"


def cache_file(folder: Path, version: str) -> Path:
    """The cached index's file for lm-eval ``version`` installed at ``folder``."""
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return index_dir() / f"lm_eval-{version}-{digest}-v{CACHE_FORMAT}.json"


def group_children(cfg: dict[str, Any]) -> list[str]:
    """A group config's member names, as written under ``task:``."""
    children = cfg.get("task") or []
    return [c if isinstance(c, str) else str(c.get("group") or c.get("task"))
            for c in ([children] if isinstance(children, str) else children)]


def _row(entry: IndexEntry) -> dict[str, Any]:
    cfg = entry.cfg or {}
    row: dict[str, Any] = {"kind": entry.kind, "path": str(entry.path) if entry.path else None,
                           "error": str(entry.error) if entry.error else None}
    if entry.kind == "tag":
        row["members"] = sorted(entry.members)
    elif entry.kind == "group":
        row["children"] = group_children(cfg)
    else:
        splits = configured_splits(cfg)
        row |= {"dataset_path": cfg.get("dataset_path"), "dataset_name": cfg.get("dataset_name"),
                "output_type": cfg.get("output_type"), "splits": [list(p) for p in splits],
                "cannot_load": _load_problem(cfg, entry.path)}
    return {k: v for k, v in row.items() if v not in (None, [], "")}


def _load_problem(cfg: dict[str, Any], path: Path | None) -> str | None:
    """What the index can tell, without importing the task's code, that keeps a task from
    loading: an output type or a named metric evalfleet does not compute (None otherwise).
    The task's full load gives the same reason when it is named."""
    from evalfleet.tasks.config import parse_output_type
    from evalfleet.tasks.metric_config import parse_metric_list

    try:
        output_type = parse_output_type(cfg.get("output_type", OutputType.GENERATE_UNTIL), path)
    except TaskError as err:
        return str(err)
    metrics = cfg.get("metric_list")
    if not isinstance(metrics, list):
        return None
    named = [m for m in metrics if isinstance(m, dict) and isinstance(m.get("metric"), str)
             and isinstance(m.get("aggregation", ""), str)]  # a !function is checked on load
    try:
        parse_metric_list(named, output_type, path, custom_results="process_results" in cfg)
    except TaskError as err:
        return str(err)
    return None


def build_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """Index ``folder`` (slow: every file is read) into the cached rows, by name."""
    return {name: _row(entry) for name, entry in sorted(build_index([folder]).items())}


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh, separators=(",", ":"))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, folder: Path, version: str) -> dict[str, dict[str, Any]] | None:
    """The cached rows, or None when the file is absent, corrupt or of another install."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if (document["format"], document["lm_eval_version"], document["folder"]) != (
                CACHE_FORMAT, version, str(folder)):
            return None
        rows = document["entries"]
        if not isinstance(rows, dict) or not all(
                isinstance(r, dict) and r.get("kind") in ("task", "group", "tag")
                for r in rows.values()):
            return None
        return rows
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("task library index unreadable; rebuilding it", path=str(path),
                    error=str(err))
        return None


def _key(folder: Path | None, version: str | None) -> tuple[Path, Path, str, int] | None:
    """(cache file, folder, version, the file's mtime or 0): what the in-memory caches key on."""
    folder = folder or lmeval_task_library()
    version = version or lmeval_version()
    if folder is None or version is None:
        return None
    path = cache_file(folder, version)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = 0
    return path, folder, version, stamp


def library_rows(folder: Path | None = None,
                 version: str | None = None) -> dict[str, dict[str, Any]]:
    """The library's rows by name, from the cache (built and written on first use). Empty
    without lm-eval."""
    key = _key(folder, version)
    return {} if key is None else _cached_rows(*key)


@lru_cache(maxsize=4)
def _cached_rows(path: Path, folder: Path, version: str,
                 stamp: int) -> dict[str, dict[str, Any]]:
    rows = _read(path, folder, version) if stamp else None
    if rows is None:
        print("indexing lm-eval's task library (once)...", file=sys.stderr, flush=True)
        rows = build_rows(folder)
        try:
            _write_atomically(path, {"format": CACHE_FORMAT, "lm_eval_version": version,
                                     "folder": str(folder), "entries": rows})
        except OSError as err:
            log.warning("could not cache the task library index", path=str(path),
                        error=str(err))
    return rows


def warm(folder: Path | None = None) -> str:
    """Index the library now where it is not cached (``evalfleet warmup``, ``make install``);
    the line to print."""
    rows = library_rows(folder)
    if not rows:
        return "lm-eval is not installed: no task library to index (pip install evalfleet[tasks])"
    key = _key(folder, None)
    return f"lm-eval's task library: {len(rows)} names indexed in {key[0] if key else '?'}"


def library_entries(folder: Path | None = None) -> dict[str, IndexEntry]:
    """lm-eval's installed task library as index entries, without their configuration (see
    ``TaskManager``, which reads a task's file when it is named). A new dict of entries shared
    between callers: they must not be changed (replace them instead)."""
    key = _key(folder, None)
    if key is None:
        return {}
    _cached_rows(*key)  # builds and writes the index where it is missing or stale
    return dict(_entries(_key(folder, None) or key))


@lru_cache(maxsize=4)
def _entries(key: tuple[Path, Path, str, int]) -> dict[str, IndexEntry]:
    out: dict[str, IndexEntry] = {}
    for name, row in _cached_rows(*key).items():
        path = Path(row["path"]) if row.get("path") else None
        out[name] = IndexEntry(
            name=name, kind=row["kind"], path=path, members=set(row.get("members", [])),
            error=TaskError(row["error"]) if row.get("error") else None,
            facts=LibraryFacts(
                dataset_path=row.get("dataset_path"), dataset_name=row.get("dataset_name"),
                output_type=row.get("output_type"),
                splits=tuple((k, s) for k, s in row.get("splits", [])),
                children=tuple(row.get("children", [])), cannot_load=row.get("cannot_load")))
    return out
