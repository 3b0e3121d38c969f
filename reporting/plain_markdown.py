"""pytablewriter's markdown tables, written directly for plain text cells.

``--tasks list`` prints ~15,000 rows with lm-eval's task library; pytablewriter infers a type per
cell and takes ~25 s for them. Cells that are plain ASCII text (what task names, paths and output
types are) come out of it as this module writes them (headers centered, cells left-aligned,
padded to the column's width); any other table is left to pytablewriter."""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Cells written here: printable ASCII without the table's separator or markdown escapes.
_PLAIN = re.compile(r"[A-Za-z0-9_./:@+\-() ]*")
_KEYWORDS = {"true", "false", "inf", "infinity", "nan", "none", "null"}


def _plain(cell: str) -> bool:
    if not _PLAIN.fullmatch(cell) or cell != cell.strip() or cell.lower() in _KEYWORDS:
        return False
    try:
        float(cell)
    except ValueError:
        return True
    return False  # a number: pytablewriter aligns it as one


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The table as ``pytablewriter.MarkdownTableWriter(...).dumps()`` writes it."""
    if not rows or not all(_plain(c) for row in rows for c in row) or \
            not all(_plain(h) for h in headers):
        from pytablewriter import MarkdownTableWriter

        table = MarkdownTableWriter()
        table.headers = list(headers)
        table.value_matrix = [list(r) for r in rows]
        return table.dumps()
    widths = [max(len(h), 3, *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["|" + "|".join(f"{h:^{w}}" for h, w in zip(headers, widths, strict=True)) + "|",
             "|" + "|".join("-" * w for w in widths) + "|"]
    lines += ["|" + "|".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)) + "|"
              for row in rows]
    return "\n".join(lines) + "\n"
