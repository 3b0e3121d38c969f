"""What the user is told about task files the index could not use: files it could not read
(named when a name asked for is unknown, and by ``tasks list``), and names two files define
(one warning line naming both, the first time the name is used or listed)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import structlog

from evalfleet.tasks.index import BrokenFile, IndexEntry

log = structlog.get_logger(__name__)
#: Bytes of a broken file read to see whether it names the task asked for.
_SNIFF_BYTES = 64 * 1024
#: Broken files a "not found" message names (the count of the others follows).
SHOWN = 5
#: (name, winner, losers) already warned about, so that a coordinator building a manager per
#: job warns once; bounded by the number of task files.
_WARNED: set[tuple[str, str, tuple[str, ...]]] = set()


def _mentions(item: BrokenFile, name: str) -> tuple[bool, bool]:
    """Whether the file's ``task:``/``group:`` line names ``name``, and whether its text names
    it anywhere (as a whole word)."""
    try:
        with item.path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return False, False
    word = rb"(?<![\w.-])" + re.escape(name.encode("utf-8", "replace")) + rb"(?![\w.-])"
    defines = re.search(rb"^[ \t]*(?:task|group)[ \t]*:[^\n]*" + word, head, re.MULTILINE)
    return defines is not None, re.search(word, head) is not None


def likely_first(name: str, broken: Sequence[BrokenFile]) -> list[BrokenFile]:
    """``broken`` with the files most likely to define ``name`` first: those whose ``task:`` or
    ``group:`` line names it, then those naming it anywhere, then by how close the file's name
    is to it (file order otherwise)."""
    def score(item: BrokenFile) -> tuple[bool, bool, float]:
        close = difflib.SequenceMatcher(None, name, item.path.stem).ratio()
        return *_mentions(item, name), close

    return sorted(broken, key=score, reverse=True)


def broken_note(name: str, broken: Sequence[BrokenFile], shown: int = SHOWN) -> str:
    """The part of an "unknown task" message naming the task files that could not be read
    (empty when none): each with its error, the likeliest to define ``name`` first."""
    if not broken:
        return ""
    ranked = likely_first(name, broken)
    more = f"; and {len(ranked) - shown} more" if len(ranked) > shown else ""
    listed = "; ".join(str(b) for b in ranked[:shown])
    return f" ({len(ranked)} task file(s) could not be read: {listed}{more})"


def broken_lines(broken: Sequence[BrokenFile]) -> list[str]:
    """``tasks list``'s lines about files it could not read (none when all were read)."""
    if not broken:
        return []
    return [f"{len(broken)} task file(s) could not be read and are not listed:",
            *(f"  {b}" for b in broken)]


def warn_if_duplicate(entry: IndexEntry) -> None:
    """Log, once per process, that other files define ``entry``'s name and which one wins."""
    if not entry.shadowed or entry.path is None:
        return
    key = (entry.name, str(entry.path), tuple(map(str, entry.shadowed)))
    if key in _WARNED:
        return
    _WARNED.add(key)
    others = ", ".join(map(str, entry.shadowed))
    log.warning(f"{entry.kind} {entry.name!r} is defined by {entry.path} and by {others}; "
                f"using {entry.path}", name=entry.name, used=str(entry.path), ignored=others)
