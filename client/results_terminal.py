"""Terminal-aware output of the ``results`` commands: piped output is plain and complete; on a
terminal, a written path is never split across lines by a prefix it could do without."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TextIO


def terminal_width(stream: TextIO) -> int | None:
    """The columns of the terminal ``stream`` writes to; None when it is piped or a file."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size().columns


def path_line(prefix: str, path: str | Path, width: int | None, suffix: str = "") -> str:
    """``prefix path suffix`` on one line, or, when a terminal of ``width`` columns would wrap
    it, the path on a line of its own (indented by two) so that only a path longer than the
    terminal itself is broken, and ``suffix`` on the next."""
    line = f"{prefix} {path}{suffix}"
    if width is None or len(line) <= width:
        return line
    return f"{prefix.rstrip()}\n  {path}" + (f"\n  {suffix.strip()}" if suffix.strip() else "")
