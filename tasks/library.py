"""lm-eval's installed task library as a cached name index.

Indexing lm-eval's ~13,000 task files takes ~20 s, so the index is kept on disk at
``$EVALFLEET_TASK_INDEX_DIR`` (default ``$EVALFLEET_CACHE_DIR/task-index``) as
``lm_eval-<version>-<hash of the folder path>-v<format>.json``, rebuilt when lm-eval's version
or folder changes or the file is unreadable, and written atomically. Per name it holds what
``tasks list`` shows (kind, file, tag members, group children, dataset, output type, the splits
read, why it cannot load where the index can tell); a task's full configuration is read from its
file only when it is named. What a task's own Python code needs to import (``load_checks``) is
stored as facts of the files and checked against the environment when listed, so installing a
package needs no rebuild."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog

from evalfleet.common.paths import cache_dir
from evalfleet.common.request_kind import OutputType
from evalfleet.tasks import load_checks
from evalfleet.tasks.dataset import configured_splits
from evalfleet.tasks.errors import TaskError
from evalfleet.tasks.index import IndexEntry, build_index, lmeval_task_library
from evalfleet.tasks.load_checks import (
    RECHECK_S,
    Need,
    Ref,
    class_dataset,
    first_unmet,
    ref_needs,
    ref_problem,
    stored_needs,
    task_refs,
)

log = structlog.get_logger(__name__)
#: Bumped when the cached file's layout changes (an old file is then rebuilt).
CACHE_FORMAT = 6
INDEX_DIR_ENV = "EVALFLEET_TASK_INDEX_DIR"


@dataclass(frozen=True)
class LibraryFacts:
    """What the index keeps of one library name (enough to list it without reading its file)."""

    dataset_path: str | None = None
    dataset_name: str | None = None
    output_type: str | None = None
    splits: tuple[tuple[str, str], ...] = ()  # (key, split) pairs the task reads
    children: tuple[str, ...] = ()  # a group's members
    static_problem: str | None = None  # why the task cannot load, known from its config
    refs: tuple[Ref, ...] = ()  # its !function/class references, in the order they load
    ref_keys: tuple[str, ...] = ()  # their keys in ``needs``
    needs: dict[str, tuple[Need, ...]] | None = None  # what each module file needs

    @property
    def cannot_load(self) -> str | None:
        """Why the task cannot load here, where the index can tell: its code's first unmet
        need (checked now, against this environment), else a problem of its config."""
        for ref, key in zip(self.refs, self.ref_keys, strict=True):
            why = _unmet(self.needs or {}, key)
            if why is not None:
                return ref_problem(ref, why)
        return self.static_problem


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
        refs = task_refs(cfg, entry.path)
        dataset = (cfg.get("dataset_path"), cfg.get("dataset_name"))
        for ref in refs:  # a Python class task: the dataset its class names
            if ref.key == "class" and ref.module_file and dataset[0] is None:
                dataset = class_dataset(ref.module_file, ref.spec.rpartition(".")[2])
        row |= {"dataset_path": dataset[0], "dataset_name": dataset[1],
                "output_type": cfg.get("output_type"), "splits": [list(p) for p in splits],
                "cannot_load": _load_problem(cfg, entry.path),
                "refs": [r.to_json() for r in refs]}
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
    """Index ``folder`` (slow: every file is read) into the cached rows, by name (the files
    of a task's references relative to ``folder`` where they are in it)."""
    rows = {name: _row(entry) for name, entry in sorted(build_index([folder]).items())}
    for row in rows.values():
        if "refs" in row:
            row["refs"] = [[_relative(v, folder) if i in (2, 3) else v for i, v in enumerate(r)]
                           for r in row["refs"]]
    return rows


def _relative(path: str | None, folder: Path) -> str | None:
    prefix = f"{folder}{os.sep}"
    return path[len(prefix):] if path and path.startswith(prefix) else path


def _absolute(ref: list[str | None], folder: Path) -> Ref:
    prefix = f"{folder}{os.sep}"
    return Ref.from_json([prefix + v if i in (2, 3) and v and not os.path.isabs(v) else v
                          for i, v in enumerate(ref)])


def needs_key(ref: Ref) -> str:
    """The key of a reference's needs in the index's needs table."""
    name = ref.spec.rpartition(".")[2] if ref.key == "class" else ""
    return f"{ref.module_file or ref.module}#{name}"


def build_needs(rows: dict[str, dict[str, Any]],
                folder: Path) -> dict[str, list[list[str | None]]]:
    """What the modules the rows' references name need, by ``needs_key`` of their stored
    form (read with ``ast``, each file once)."""
    table: dict[str, list[list[str | None]]] = {}
    for row in rows.values():
        for value in row.get("refs", []):
            key = needs_key(Ref.from_json(value))
            if key not in table:
                table[key] = stored_needs(ref_needs(_absolute(value, folder)))
    return table


#: The needs table of each cached index file, read or built with its rows.
_NEEDS: dict[Path, dict[str, tuple[Need, ...]]] = {}


_UNMET: dict[tuple[int, str], tuple[float, int, str | None]] = {}


def _unmet(table: dict[str, tuple[Need, ...]], key: str) -> str | None:
    """``first_unmet`` of a table's entry, remembered as long as its checks are."""
    now, generation = time.monotonic(), load_checks.generation()
    known = _UNMET.get((id(table), key))
    if known is None or now - known[0] > RECHECK_S or known[1] != generation:
        known = _UNMET[(id(table), key)] = (now, generation, first_unmet(table.get(key, ())))
    return known[2]


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
    """The cached rows, or None when the file is absent, corrupt or of another install (its
    needs table goes to ``_NEEDS``)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if (document["format"], document["lm_eval_version"], document["folder"]) != (
                CACHE_FORMAT, version, str(folder)):
            return None
        _NEEDS[path] = {k: tuple(Need.from_json(n) for n in v)
                        for k, v in document["needs"].items()}
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
        needs = build_needs(rows, folder)
        _NEEDS[path] = {k: tuple(Need.from_json(n) for n in v) for k, v in needs.items()}
        try:
            _write_atomically(path, {"format": CACHE_FORMAT, "lm_eval_version": version,
                                     "folder": str(folder), "entries": rows, "needs": needs})
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
                children=tuple(row.get("children", [])), static_problem=row.get("cannot_load"),
                refs=tuple(_absolute(r, key[1]) for r in row.get("refs", [])),
                ref_keys=tuple(needs_key(Ref.from_json(r)) for r in row.get("refs", [])),
                needs=_NEEDS.get(key[0])))
    return out
