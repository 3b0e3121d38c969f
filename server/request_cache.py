"""The request cache (lm_eval's ``--cache_requests``): each task's built requests, reused.

Building a task's requests means reading its split and rendering every prompt (few-shot blocks
included); for large suites that is seconds to minutes of planning before any model call. With
``cache_requests`` the coordinator keeps what it built in ``<cache dir>/requests/`` (cache dir:
``$EVALFLEET_CACHE_DIR``, default ``~/.cache/evalfleet``), one file per task and settings:

- ``true``: reuse the cached requests when present, else build and save them;
- ``refresh``: build and overwrite;
- ``delete``: delete the whole request cache, then build without it.

The key covers everything the requests depend on: the task's merged config, the data files'
names, sizes and modification times, limit or samples, num_fewshot, the few-shot seed, the
system instruction, chat-template settings (the template's sha256 and whether prompts are chat
messages), fewshot_as_multiturn, gen_kwargs and the evalfleet version, so a changed
task file or data mirror is never served stale requests. Only the coordinator's own directory is
written; a spec picks the mode, never the path.

The cache is bounded: after each write, the files used least recently are deleted until it
holds at most ``$EVALFLEET_REQUEST_CACHE_MB`` megabytes (default 2048); a file read from the
cache counts as used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from evalfleet.common.errors import InvalidArgumentError
from evalfleet.common.logging import get_logger
from evalfleet.common.request_kind import OutputType
from evalfleet.tasks import EvalTask, Request, Task

log = get_logger("request_cache")
MODES = ("", "true", "refresh", "delete")
_FORMAT = 1
#: Megabytes the request cache keeps on disk unless ``$EVALFLEET_REQUEST_CACHE_MB`` says.
DEFAULT_MAX_MB = 2048


def cache_root() -> Path:
    """``<$EVALFLEET_CACHE_DIR or ~/.cache/evalfleet>/requests``."""
    env = os.environ.get("EVALFLEET_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(env) if env else (Path(xdg) if xdg else Path.home() / ".cache") / "evalfleet"
    return base / "requests"


def max_bytes() -> int:
    """The request cache's size bound: ``$EVALFLEET_REQUEST_CACHE_MB`` megabytes (default
    :data:`DEFAULT_MAX_MB`; a value that is not a number >= 0 is logged and the default used)."""
    raw = os.environ.get("EVALFLEET_REQUEST_CACHE_MB", "").strip()
    if raw:
        try:
            megabytes = float(raw)
        except ValueError:
            megabytes = -1.0
        if 0 <= megabytes < math.inf:
            return int(megabytes * 2**20)
        log.warning("request_cache_limit_invalid", variable="EVALFLEET_REQUEST_CACHE_MB",
                    value=raw, using_mb=DEFAULT_MAX_MB,
                    fix="set a number of megabytes >= 0, or unset it")
    return DEFAULT_MAX_MB * 2**20


def prune(root: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Delete the cache files used least recently (oldest modification time first) until
    ``root`` holds at most ``limit`` bytes of them; ``keep`` (the file just written) stays.
    Returns the files deleted; files that vanish meanwhile (another coordinator) are skipped."""
    files = []
    for path in root.glob("*.pkl"):
        with contextlib.suppress(OSError):
            stat = path.stat()
            files.append((stat.st_mtime_ns, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    deleted = []
    for _, size, path in sorted(files):
        if total <= limit:
            break
        if path == keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted.append(path)
        total -= size
    if deleted:
        log.info("request_cache_pruned", files=len(deleted), path=str(root),
                 kept_bytes=total, limit_bytes=limit)
    return deleted


def check_mode(mode: str) -> None:
    """INVALID_ARGUMENT for anything but '', 'true', 'refresh' or 'delete'."""
    if mode not in MODES:
        raise InvalidArgumentError(
            f"spec.cache_requests: '{mode}' is not one of true, refresh, delete (or empty)")


@dataclass
class TaskRequests:
    """What planning needs from a task: its requests, evaluated docs and split size."""

    requests: list[Request]
    docs: list[tuple[int, dict]]
    original_size: int


def _data_stamp(task: Task) -> list[tuple[str, int, int]]:
    folder = task.source.folder
    if folder is None or not folder.is_dir():
        return []
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.iterdir() if p.is_file())


def cache_key(task: Task, settings: dict[str, Any]) -> str:
    """Content key of a task's requests under ``settings``."""
    payload = {"format": _FORMAT, "evalfleet": version("evalfleet"), "task": task.name,
               "config": task.config, "data": _data_stamp(task), "settings": settings}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _state(task: Task) -> dict[str, Any]:
    """Task attributes that building sets and scoring reads."""
    return {"features": task._features, "multiple_input": task.multiple_input,
            "multiple_target": task.multiple_target,
            "effective_num_fewshot": task.effective_num_fewshot}


def _restore(task: Task, state: dict[str, Any]) -> None:
    task._features = state["features"]
    task.multiple_input = state["multiple_input"]
    task.multiple_target = state["multiple_target"]
    task.effective_num_fewshot = state["effective_num_fewshot"]
    task._probed = True


def build_task_requests(task: EvalTask, *, mode: str, limit: float | int | None,
                        samples: Sequence[int] | None, num_fewshot: int | None,
                        fewshot_seed: int, system_instruction: str | None,
                        apply_chat_template: bool, gen_kwargs: dict[str, Any] | None,
                        chat: Any = None, fewshot_as_multiturn: bool = False,
                        ) -> TaskRequests:
    """A task's requests, from the request cache when ``mode`` allows it. ``chat`` is the
    job's chat-template renderer (its template's sha is part of the key). A Python class
    task's requests are always built (what they depend on is the class's to read)."""
    def build() -> TaskRequests:
        requests = task.build_requests(
            limit=limit, samples=samples, num_fewshot=num_fewshot, fewshot_seed=fewshot_seed,
            system_instruction=system_instruction, apply_chat_template=apply_chat_template,
            chat_template=chat.render if chat is not None else None,
            fewshot_as_multiturn=fewshot_as_multiturn, gen_kwargs=gen_kwargs)
        return TaskRequests(requests, task.eval_docs(limit, samples), len(task.all_eval_docs()))

    if mode not in ("true", "refresh") or task.loads_own_docs:
        return build()  # a class task's documents are its own code's: no key can cover them
    settings = {"limit": limit, "samples": list(samples) if samples else None,
                "num_fewshot": num_fewshot, "fewshot_seed": fewshot_seed,
                "system_instruction": system_instruction,
                "apply_chat_template": apply_chat_template, "gen_kwargs": gen_kwargs,
                "fewshot_as_multiturn": fewshot_as_multiturn,
                "chat_template_sha": getattr(chat, "template_sha", None),
                "chat_messages": getattr(chat, "messages", None)}
    path = cache_root() / f"{task.name.replace('/', '_')}-{cache_key(task, settings)}.pkl"
    if mode == "true" and path.is_file():
        try:
            with path.open("rb") as handle:
                stored = pickle.load(handle)
            _restore(task, stored["state"])
            with contextlib.suppress(OSError):  # used now: the last to be pruned
                os.utime(path)
            if gen_kwargs and task.output_type == OutputType.GENERATE_UNTIL and \
                    task.cfg.generation_kwargs is not None:
                task.cfg.generation_kwargs.update(gen_kwargs)
            log.info("requests_from_cache", task=task.name, path=str(path))
            return stored["requests"]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, AttributeError) as exc:
            log.warning("request_cache_unreadable", path=str(path), error=str(exc))
    built = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            pickle.dump({"state": _state(task), "requests": built}, handle,
                        protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
        log.info("requests_cached", task=task.name, path=str(path))
        prune(path.parent, max_bytes(), keep=path)
    except OSError as exc:  # a read-only cache never fails a job
        log.warning("request_cache_not_written", path=str(path), error=str(exc))
    return built


def delete_cache() -> None:
    """Delete every cached request file (``--cache_requests delete``)."""
    root = cache_root()
    if root.is_dir():
        shutil.rmtree(root, ignore_errors=True)
        log.info("request_cache_deleted", path=str(root))
