"""``govnotify db upgrade`` and ``govnotify schemas generate [--out DIR]``."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from infra.cli import exits
from infra.cli.options import Verbs
from infra.db import upgrade
from infra.settings import get_settings
from schemas.jsonschema_gen import SCHEMA_DIR, write_all

__all__ = ["cmd_db", "cmd_schemas", "default_schema_dir", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="apply the database migrations")
    Verbs(p).add("upgrade", cmd_db, "migrate the database to the newest schema")

    p = sub.add_parser("schemas", help="regenerate the JSON Schema files of every event")
    generate = Verbs(p).add(
        "generate", cmd_schemas, "write one JSON Schema file per event type and version"
    )
    generate.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to write them to (its stale *.schema.json files are removed); default: "
        "schemas/jsonschema of the source checkout, when govnotify runs from one",
    )


def cmd_db(args: argparse.Namespace) -> int:
    upgrade(get_settings())
    print("database migrated to head")
    return exits.OK


def default_schema_dir() -> Path | None:
    """``schemas/jsonschema`` when the ``schemas`` package is a govnotify source checkout's.

    An installed wheel's copy lives in site-packages: writing there would change an installed
    package behind its installer's back, and be lost at the next install.
    """
    pyproject = SCHEMA_DIR.parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return SCHEMA_DIR if project.get("name") == "govnotify" else None


def cmd_schemas(args: argparse.Namespace) -> int:
    folder = args.out or default_schema_dir()
    if folder is None:
        raise exits.CommandError(
            "govnotify is not running from its source checkout: say where to write the "
            "schemas with --out DIR",
            exits.USAGE,
        )
    for path in write_all(folder):
        print(f"wrote {path}")
    return exits.OK
