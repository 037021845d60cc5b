"""``govnotify sources add|list|disable``: who may publish which events (the sources registry).

``add`` registers a source and, unless its RabbitMQ user exists already, creates that user with
write-only permission on the ingest exchange (through ``rabbitmqctl``, so run it on a RabbitMQ
node) and prints its password once; with ``--http-token`` it also prints an HTTP token once.
govnotify keeps neither: RabbitMQ keeps the password's hash, the registry a salted HMAC of the
token. Every change is recorded in ``operator_audit``.
"""

from __future__ import annotations

import argparse
import sys

from infra import audit
from infra.cli import exits
from infra.cli.output import add_json_flag, print_json, print_table
from infra.db import session
from infra.settings import get_settings
from infra.sources import (
    REGISTRY_TTL_S,
    SourceError,
    create_source,
    disable_source,
    list_sources,
    sources_of_user,
    types_of,
)

__all__ = ["cmd_sources", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sources", help="register upstream sources: who may publish which events")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", help="register a source, create its RabbitMQ user, print credentials once"
    )
    add.add_argument("name", help="the source, as events carry it in their envelope")
    add.add_argument(
        "--types",
        required=True,
        help="comma-separated event types it may send, e.g. license.issued,license.renewed",
    )
    add.add_argument(
        "--user",
        help="RabbitMQ user that publishes it (default: the source's name; created if it does "
        "not exist, left as it is if it does). Without --user, --http-token means HTTP only",
    )
    add.add_argument("--http-token", action="store_true", help="also give it an HTTP ingest token")
    add.add_argument("--operator", help="who does this (default: your login), for the audit")
    listing = actions.add_parser("list", help="every source, its user and types (no secrets)")
    add_json_flag(listing)
    disable = actions.add_parser("disable", help="refuse a source's events from now on")
    disable.add_argument("name")
    disable.add_argument("--operator", help="who does this (default: your login), for the audit")
    p.set_defaults(func=cmd_sources)


def _operator(args: argparse.Namespace) -> str:
    return audit.operator_name(args.operator)


def cmd_sources(args: argparse.Namespace) -> int:
    try:
        return {"add": _add, "list": _list, "disable": _disable}[args.action](args)
    except SourceError as exc:
        print(f"govnotify: {exc}", file=sys.stderr)
        return exits.USAGE


def _add(args: argparse.Namespace) -> int:
    s = get_settings()
    user = args.user if args.user or args.http_token else args.name
    new = create_source(
        s,
        args.name,
        args.types.split(","),
        amqp_user=user,
        http_token=args.http_token,
        operator=_operator(args),
    )
    row = new.source
    print(f"source {row.name} registered; it may send {', '.join(types_of(row))}")
    if user is None:
        print("  AMQP: none (HTTP only)")
    elif new.amqp_password is not None:
        print(f"  AMQP user {user}: created, may only write to {s.exchange}")
        print(f"  AMQP password: {new.amqp_password}")
    else:
        print(f"  AMQP user {user}: exists already; its password and permissions are unchanged")
    if new.http_token is not None:
        print(f"  HTTP token: {new.http_token}")
    if new.amqp_password is not None or new.http_token is not None:
        print("  Shown once: govnotify does not keep it. Publishers set user_id to their login.")
    print(f"  The relay accepts its events within {REGISTRY_TTL_S:g} s.")
    return 0


def _list(args: argparse.Namespace) -> int:
    s = get_settings()
    with session(s) as db:
        rows = list_sources(db)
    if args.json:
        print_json(
            {
                "sources": [
                    {
                        "name": r.name,
                        "amqp_user": r.amqp_user,
                        "http": bool(r.token_hash),
                        "created_at": r.created_at,
                        "disabled_at": r.disabled_at,
                        "event_types": list(types_of(r)),
                    }
                    for r in rows
                ]
            }
        )
        return exits.OK
    print_table(
        f"sources ({len(rows)})",
        ["source", "AMQP user", "HTTP", "created", "disabled", "event types"],
        [
            [
                r.name,
                r.amqp_user or "",
                "yes" if r.token_hash else "",
                f"{r.created_at.astimezone(s.tz):%Y-%m-%d %H:%M}",
                f"{r.disabled_at.astimezone(s.tz):%Y-%m-%d %H:%M}" if r.disabled_at else "",
                ", ".join(types_of(r)),
            ]
            for r in rows
        ],
    )
    return 0


def _disable(args: argparse.Namespace) -> int:
    s = get_settings()
    with session(s) as db:
        row = disable_source(db, args.name, operator=_operator(args))
        others = (
            [o.name for o in sources_of_user(db, row.amqp_user) if o.disabled_at is None]
            if row.amqp_user
            else []
        )
    assert row.disabled_at is not None
    print(
        f"source {row.name} disabled since {row.disabled_at.astimezone(s.tz):%Y-%m-%d %H:%M:%S}; "
        f"the relay refuses its events within {REGISTRY_TTL_S:g} s"
    )
    if row.amqp_user and not others:
        print(
            f"  RabbitMQ user {row.amqp_user} publishes no other enabled source; remove it with "
            f"`rabbitmqctl delete_user {row.amqp_user}` if it is no longer needed"
        )
    return 0
