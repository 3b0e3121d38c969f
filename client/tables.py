"""Tables the CLI prints (``workers``, ``tasks list``): fitted to a terminal, plain elsewhere.

On a terminal the table fits its width: optional columns are left out (the last first) until it
does, the columns that identify a row never wrap, and the others wrap whole words rather than
being cut. Piped into a file, a log or ``grep``, every row is one tab-separated line of complete
values, under one header line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Column:
    """A column: its header, whether it identifies the row, and whether a narrow terminal may
    leave it out (``drop_order``: lower goes first; None keeps it)."""

    header: str
    key: bool = False
    drop_order: int | None = None


#: The width a column that is always shown and wraps (``last error``) is counted at.
WRAPPED_WIDTH = 24


def _natural_width(columns: Sequence[Column], rows: Sequence[Sequence[str]],
                   indices: Sequence[int]) -> int:
    """The width of a rich table (heavy head, one space of padding) showing ``indices``; a
    column that wraps and is never dropped counts at most ``WRAPPED_WIDTH``."""
    widths = [max([len(columns[i].header), *(len(row[i]) for row in rows)]) for i in indices]
    widths = [min(w, max(WRAPPED_WIDTH, len(columns[i].header)))
              if not columns[i].key and columns[i].drop_order is None else w
              for w, i in zip(widths, indices, strict=True)]
    return sum(widths) + 3 * len(widths) + 1


def fitted_columns(columns: Sequence[Column], rows: Sequence[Sequence[str]],
                   width: int) -> list[int]:
    """Indices of the columns shown at ``width``: the optional ones dropped, lowest
    ``drop_order`` first, until the table fits (or none is left to drop)."""
    shown = list(range(len(columns)))
    optional = sorted((c.drop_order, i) for i, c in enumerate(columns) if c.drop_order is not None)
    for _, index in optional:
        if _natural_width(columns, rows, shown) <= width:
            break
        shown.remove(index)
    return shown


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]],
                console: Console | None = None) -> None:
    """``rows`` as a table fitted to a terminal, or as tab-separated lines when not one."""
    console = console or Console()
    if not console.is_terminal:
        lines = ["\t".join(c.header for c in columns),
                 *("\t".join(value.replace("\t", " ").replace("\n", " ") for value in row)
                   for row in rows)]
        console.file.write("".join(line + "\n" for line in lines))
        console.file.flush()
        return
    shown = fitted_columns(columns, rows, console.width)
    table = Table()
    for i in shown:
        key = columns[i].key
        table.add_column(columns[i].header, no_wrap=key, overflow="fold",
                         min_width=max(len(row[i]) for row in rows) if key and rows else None)
    for row in rows:
        table.add_row(*(Text(row[i]) for i in shown))
    console.print(table)
