"""Find and read the files of one evaluation run, as lm-eval 0.4.13 (and evalfleet) write them.

A run is a results file ``results_<date>.json`` (or ``<stem>_<date>.json`` when ``--output_path``
named a ``.json`` file) and, when it was made with ``--log_samples``, one
``samples_<task>_<date>.jsonl`` per task beside it, sharing the date.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalfleet.common.errors import InvalidArgumentError, NotFoundError

#: lm-eval's date id: ``datetime.now().isoformat().replace(":", "-")``.
DATE_ID = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?)$")


@dataclass
class Run:
    """One run's results document and per-task sample records."""

    path: Path
    results: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    label: str = ""
    note: str | None = None  # why this file was taken, when the path held several

    @property
    def model_name(self) -> str:
        """The model's name as lm-eval records it (``pretrained=`` of the model args)."""
        name = self.results.get("model_name")
        if name:
            return str(name)
        args = (self.results.get("config") or {}).get("model_args")
        if isinstance(args, dict):
            return str(args.get("pretrained") or args.get("model") or "model")
        if isinstance(args, str) and "=" in args:
            return args.split("=", 1)[1].split(",", 1)[0]
        return "model"

    def task_names(self) -> list[str]:
        """Leaf tasks and groups in the results, in the file's order."""
        return list(self.results.get("results", {}))

    def leaf_tasks(self) -> list[str]:
        """The tasks of the results that are not groups, in the file's order."""
        subtasks = self.results.get("group_subtasks") or {}
        return [t for t in self.task_names() if not subtasks.get(t)]


def date_id(path: Path) -> str | None:
    """The date id at the end of a results file's name, if any."""
    match = DATE_ID.search(path.stem)
    return match.group(1) if match else None


def _newest(files: list[Path]) -> Path:
    return max(files, key=lambda p: (date_id(p) or "", p.name))


@dataclass(frozen=True)
class Choice:
    """The results file taken for a path, and why when the path held several."""

    path: Path
    note: str | None = None


def _candidates(path: str | Path) -> list[Path]:
    """The results files ``path`` may mean (several only for a folder or a ``.json`` stem)."""
    target = Path(path)
    if target.is_file():
        return [target]
    if target.suffix == ".json":
        pattern = f"{target.stem}_*.json"
        matches = [p for p in target.parent.glob(pattern) if date_id(p)]
        if matches:
            return matches
        raise NotFoundError(f"{target}: no such file, nor any {target.parent / pattern}")
    if not target.is_dir():
        raise NotFoundError(f"{target}: no such file or directory")
    here = [p for p in target.glob("*.json") if date_id(p)]
    if here:
        return here
    folders = sorted({p.parent for p in target.glob("*/*.json") if date_id(p)})
    if len(folders) == 1:
        return [p for p in folders[0].glob("*.json") if date_id(p)]
    if len(folders) > 1:
        names = ", ".join(str(f) for f in folders)
        raise InvalidArgumentError(f"{target}: holds runs of several models ({names}); "
                                   "name one of those folders")
    raise NotFoundError(f"{target}: no results_<date>.json in it or in a model folder below it")


def _tasks_in(path: Path) -> tuple[str, ...] | None:
    """The task and group names of a results file (None when it cannot be read as one)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    results = doc.get("results") if isinstance(doc, dict) else None
    return tuple(sorted(results)) if isinstance(results, dict) else None


def _listing(tasks: tuple[str, ...] | None, most: int = 6) -> str:
    if tasks is None:
        return "not a results file"
    shown = ", ".join(tasks[:most]) or "no tasks"
    return shown + (f" +{len(tasks) - most} more" if len(tasks) > most else "")


def choose_results_file(path: str | Path, *, strict: bool = False) -> Choice:
    """The results file a user means by ``path``, and a note saying why when there were several.

    ``path`` may be a results file; an ``--output_path`` directory (one model folder inside, or
    the model folder itself); or the ``--output_path x.json`` given to ``eval``, which lm-eval
    turns into ``x_<date>.json``. Of several files the newest is taken (lm-eval's rule), with a
    note; when their tasks differ, ``strict`` refuses instead (INVALID_ARGUMENT naming the files
    and ``--newest``), so a run with fewer tasks is never taken silently.
    """
    files = _candidates(path)
    newest = _newest(files)
    if len(files) == 1:
        return Choice(newest)
    tasks = {p: _tasks_in(p) for p in files}
    others = sorted((p for p in files if p != newest), key=lambda p: p.name, reverse=True)
    if all(tasks[p] == tasks[newest] for p in others):
        return Choice(newest, f"{path}: took {newest.name}, the newest of {len(files)} results "
                              "files (all with the same tasks); name a file to take another")
    differ = "; ".join(f"{p.name}: {_listing(tasks[p])}" for p in [newest, *others])
    if strict:
        raise InvalidArgumentError(
            f"{path}: holds {len(files)} results files with different tasks ({differ}); name "
            f"the file to use, or pass --newest to take the newest ({newest.name})")
    return Choice(newest, f"{path}: took {newest.name}, the newest of {len(files)} results "
                          f"files, whose tasks differ ({differ}); name a file to take another")


def find_results_file(path: str | Path) -> Path:
    """The results file a user means by ``path`` (the newest of several; see
    :func:`choose_results_file`). NOT_FOUND says what was searched."""
    return choose_results_file(path).path


def samples_files(results_file: Path) -> dict[str, Path]:
    """``task -> samples_<task>_<date>.jsonl`` written beside a results file."""
    when = date_id(results_file)
    if when is None:
        return {}
    out: dict[str, Path] = {}
    suffix = f"_{when}.jsonl"
    for path in sorted(results_file.parent.glob(f"samples_*{suffix}")):
        out[path.name[len("samples_"):-len(suffix)]] = path
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; INVALID_ARGUMENT naming the file and line when one is bad."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return records


def load_run(path: str | Path, *, with_samples: bool = True, label: str | None = None,
             strict: bool = False) -> Run:
    """Read a run (see :func:`choose_results_file` for what ``path`` and ``strict`` mean)."""
    choice = choose_results_file(path, strict=strict)
    results_file = choice.path
    try:
        results = json.loads(results_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{results_file}: not a results JSON ({exc.msg})") from None
    if not isinstance(results, dict) or "results" not in results:
        raise InvalidArgumentError(f"{results_file}: has no 'results' section; is it an "
                                   "lm-eval results file?")
    run = Run(path=results_file, results=results, note=choice.note)
    if with_samples:
        run.samples = {task: read_jsonl(p) for task, p in samples_files(results_file).items()}
    run.label = label or short_name(run.model_name)
    return run


def short_name(model_name: str) -> str:
    """A model name for labels: a local path's last folder, a hub id as it is."""
    if model_name.startswith(("/", "./", "../", "~")):
        return Path(model_name).name or model_name
    return model_name


def unique_labels(runs: list[Run]) -> None:
    """Make run labels distinct (two runs of one model get their folder or date appended)."""
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.label} ({run.path.parent.name}/{date_id(run.path) or run.path.stem})"
