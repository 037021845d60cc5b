"""How commands print: a plain table, aligned ``key value`` lines, or one JSON document.

With ``--json`` a command prints one JSON document on stdout and nothing else (messages go to
stderr), in the style of ``govnotify workdays --json``: keys in snake_case, times as ISO 8601
with their offset, personal data masked as in the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Mapping, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

__all__ = ["add_json_flag", "print_dict", "print_json", "print_table"]


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


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` option, worded the same on every list and status command."""
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout, nothing else"
    )


def _default(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def print_json(document: object) -> None:
    """``document`` as indented JSON on stdout (Chinese left readable, dates as ISO 8601)."""
    print(json.dumps(document, ensure_ascii=False, indent=2, default=_default))
