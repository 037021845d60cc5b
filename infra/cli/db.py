"""``govnotify db upgrade`` and ``govnotify schemas generate``."""

from __future__ import annotations

import argparse

from infra.db import upgrade
from infra.settings import get_settings
from schemas.jsonschema_gen import write_all

__all__ = ["cmd_db", "cmd_schemas", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="apply the database migrations")
    p.add_argument("action", choices=["upgrade"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("schemas", help="regenerate the JSON Schema files of every event")
    p.add_argument("action", choices=["generate"])
    p.set_defaults(func=cmd_schemas)


def cmd_db(args: argparse.Namespace) -> int:
    upgrade(get_settings())
    print("database migrated to head")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    for path in write_all():
        print(f"wrote {path}")
    return 0
