"""How commands print: a plain table, or aligned ``key value`` lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

__all__ = ["print_dict", "print_table"]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain table on stdout; rich measures Chinese characters as two columns wide."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console(soft_wrap=True, width=120).print(table)


def print_dict(values: Mapping[str, object]) -> None:
    """One indented ``key value`` line per entry."""
    for key, value in values.items():
        print(f"  {key:<10} {value}")
