"""What every table the CLI prints shares: it fits 80 columns, its long digests and ids are
shortened to a prefix the commands take back (``--wide`` or ``--json`` shows them whole),
and a cell without a value says why, in place or in a footnote under the table."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["SHORT", "Footnotes", "WideFlag", "short", "table"]

SHORT = 12
"""Hex digits kept of a digest or an id: unique among any silo's or federation's own."""

WideFlag = Annotated[
    bool, typer.Option("--wide", help="Digests and ids whole, however wide the table.")
]

_MARKS = "¹²³⁴⁵⁶⁷⁸⁹"


def short(value: str, wide: bool = False) -> str:
    """``value`` cut to its first :data:`SHORT` characters, unless ``wide``."""
    return value if wide or len(value) <= SHORT else value[:SHORT]


def table(title: str, *columns: str, wrap: tuple[str, ...] = ()) -> Table:
    """A table whose columns keep their values whole, but those in ``wrap``, which wrap
    (at words, long words folded) to fit the terminal: names are never cut short."""
    made = Table(title=title)
    for column in columns:
        if column in wrap:
            made.add_column(column, overflow="fold")
        else:
            made.add_column(column, no_wrap=True)
    return made


class Footnotes:
    """The reasons a table's cells hold no value: each cell shows ``-`` and a mark, and
    the reason is printed once under the table, after its mark."""

    def __init__(self) -> None:
        self._reasons: list[str] = []

    def __bool__(self) -> bool:
        return bool(self._reasons)

    def dash(self, reason: str) -> str:
        """The cell for a missing value: ``-`` with the mark of ``reason``."""
        if reason not in self._reasons:
            self._reasons.append(reason)
        return "-" + self._mark(self._reasons.index(reason))

    def _mark(self, index: int) -> str:
        return _MARKS[index] if index < len(_MARKS) else f"[{index + 1}]"

    def under(self, shown: RenderableType) -> RenderableType:
        """``shown`` with the reasons printed under it."""
        if not self._reasons:
            return shown
        lines = [Text(f"{self._mark(i)} {reason}") for i, reason in enumerate(self._reasons)]
        return Group(shown, *lines)


def print_table(console: Console, shown: Table, notes: Footnotes | None = None) -> None:
    """Print ``shown``, and the footnotes of its empty cells under it."""
    console.print(shown if notes is None else notes.under(shown))
