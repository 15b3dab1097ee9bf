"""Tables that stay readable in narrow terminals (80 columns: Terminal.app's default).

`fit_table` builds a rich Table and, when its natural width exceeds the console's, drops
the columns marked optional (least useful first), then lets the columns marked `fold`
(file names, repos) wrap onto more lines instead of being cut; no other column is ever
folded to a few characters or truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Column:
    name: str
    drop: int = 0  # 0: always kept; otherwise dropped when narrow, highest first
    fold: bool = False  # may wrap (long names) rather than widen the table
    justify: str = "left"


def _natural_width(columns: list[Column], rows: list[list[str]]) -> int:
    """The width of the table with every cell on one line (rich's default box: one border
    and one space of padding on each side of every cell)."""
    widths = [Text.from_markup(c.name).cell_len for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], Text.from_markup(cell).cell_len)
    return sum(widths) + 3 * len(columns) + 1


def fit_table(title: str, columns: list[Column], rows: list[list[str]], width: int) -> Table:
    """A table of these rows that fits `width` columns (see the module docstring)."""
    keep = list(range(len(columns)))
    droppable = sorted((c.drop, i) for i, c in enumerate(columns) if c.drop)
    while droppable and _natural_width([columns[i] for i in keep],
                                       [[r[i] for i in keep] for r in rows]) > width:
        keep.remove(droppable.pop()[1])
    table = Table(title=title)
    for i in keep:
        c = columns[i]
        table.add_column(c.name, justify=c.justify, no_wrap=not c.fold,
                         overflow="fold" if c.fold else "ellipsis")
    for r in rows:
        table.add_row(*(r[i] for i in keep))
    return table
