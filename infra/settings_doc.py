"""The README's settings table, generated from :class:`infra.settings.Settings`.

One row per field: its environment variable, its default and its ``#:`` comment as the meaning.
The comments are read from the source of :mod:`infra.settings` (the way Sphinx's autodoc reads
``#:`` attribute comments; Sphinx itself is far too large a dependency for these few lines, and
pydantic's ``use_attribute_docstrings`` reads docstrings under a field, not the ``#:`` comments
the project writes above its constants). A field without a comment is an error: the unit test
that compares the README with :func:`settings_table` then fails, so a new setting cannot reach
CI without its meaning.

Run ``python -m infra.settings_doc`` to rewrite the table in README.md, ``--check`` to only
compare (exit 1 when they differ).
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import inspect
import json
import re
import sys
from pathlib import Path

from infra import settings as settings_module
from infra.settings import Settings, env_name

__all__ = [
    "TABLE_HEADER",
    "MissingCommentError",
    "field_comments",
    "main",
    "readme_table",
    "replace_readme_table",
    "settings_table",
]

#: The first two lines of the table in README.md; the table is every ``|`` line after them.
TABLE_HEADER = "| variable | default | meaning |\n|---|---|---|"


class MissingCommentError(Exception):
    """Raised when a field of Settings has no ``#:`` comment to give its meaning."""


def field_comments() -> dict[str, str]:
    """Each field of Settings → its ``#:`` comment, the lines joined with spaces.

    The ``#:`` lines directly above a field are its comment; plain ``#`` lines between them
    and the field (a note for the reader of the code) are skipped.
    """
    source = inspect.getsource(settings_module)
    lines = source.splitlines()
    tree = ast.parse(source)
    settings_class = next(
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == Settings.__name__
    )
    comments = {}
    for node in settings_class.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        block: list[str] = []
        index = node.lineno - 2  # the line above the field, 0-based
        while index >= 0:
            text = lines[index].strip()
            if text.startswith("#:"):
                block.insert(0, text.removeprefix("#:").strip())
            elif text.startswith("#") and not block:
                pass  # a plain comment under the #: block
            else:
                break
            index -= 1
        comments[node.target.id] = " ".join(block)
    return comments


def _default(value: object) -> str:
    """A default as it would be written in the environment variable."""
    if value is None or value == "":
        return "*(empty)*"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, dt.time):
        text = value.strftime("%H:%M")
    elif isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return f"`{text}`"


def _meaning(comment: str) -> str:
    """A ``#:`` comment as a Markdown table cell: reST ````code```` as Markdown, ``|`` escaped."""
    return re.sub(r"``(.+?)``", r"`\1`", comment).replace("|", "\\|")


def settings_table() -> str:
    """The Markdown table of every setting, in the order Settings declares them.

    Raises:
      MissingCommentError: naming every field without a ``#:`` comment.
    """
    comments = field_comments()
    missing = [name for name in Settings.model_fields if not comments.get(name)]
    if missing:
        raise MissingCommentError(
            "fields of Settings without a #: comment (infra/settings.py): " + ", ".join(missing)
        )
    rows = [
        f"| `{env_name(name)}` | {_default(field.default)} | {_meaning(comments[name])} |"
        for name, field in Settings.model_fields.items()
    ]
    return "\n".join([TABLE_HEADER, *rows])


def _table_span(readme: str) -> tuple[int, int]:
    """Start and end offsets of the settings table in ``readme``.

    Raises:
      ValueError: when the README has no settings table header.
    """
    start = readme.find(TABLE_HEADER)
    if start < 0:
        raise ValueError(
            f"the README has no settings table (a line {TABLE_HEADER.splitlines()[0]!r})"
        )
    end = start
    for line in readme[start:].splitlines(keepends=True):
        if not line.startswith("|"):
            break
        end += len(line)
    return start, end


def readme_table(readme: str) -> str:
    """The settings table as the README has it (without its final line break)."""
    start, end = _table_span(readme)
    return readme[start:end].rstrip("\n")


def replace_readme_table(readme: str) -> str:
    """``readme`` with its settings table replaced by :func:`settings_table`."""
    start, end = _table_span(readme)
    return readme[:start] + settings_table() + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.settings_doc",
        description="Write the settings table of README.md from infra/settings.py.",
    )
    parser.add_argument("readme", nargs="?", type=Path, default=Path("README.md"))
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 when the table differs"
    )
    args = parser.parse_args(argv)
    try:
        text = args.readme.read_text(encoding="utf-8")
        updated = replace_readme_table(text)
    except (OSError, ValueError, MissingCommentError) as exc:
        print(f"settings_doc: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if updated != text:
            print(
                f"settings_doc: the settings table of {args.readme} differs from Settings; run "
                "python -m infra.settings_doc",
                file=sys.stderr,
            )
            return 1
        return 0
    if updated != text:
        args.readme.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
