"""Errors raised by the task engine; every message names the file, key and problem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class TaskError(Exception):
    """A bad task file or configuration."""


class TaskNotFoundError(TaskError):
    """A requested task, group or tag name is unknown."""

    def __init__(self, name: str, suggestions: Sequence[str] = (), note: str = "") -> None:
        self.name = name
        self.suggestions = list(suggestions)
        self.note = note  # e.g. the task files that could not be read
        hint = f"; did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"unknown task, group or tag {name!r}{hint}{note}")


class SampleIndexError(TaskError):
    """Requested document indices (``--samples``) fall outside the evaluated split."""


class DataNotFoundError(TaskError):
    """A dataset split could not be found in the data mirror (or elsewhere)."""

    def __init__(self, message: str, paths_searched: Sequence[str | Path] = ()) -> None:
        self.paths_searched = [str(p) for p in paths_searched]
        super().__init__(message)


def config_error(source: str | Path | None, key: str | None, problem: str) -> TaskError:
    """Build a one-line TaskError naming the file, key and problem."""
    where = str(source) if source else "<inline config>"
    what = f" key {key!r}" if key else ""
    return TaskError(f"{where}:{what} {problem}".replace("\n", " "))
