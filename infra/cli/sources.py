"""``govnotify sources add|list|disable|set-outcome|outcome-key``: who may publish which events
(the sources registry), who may trace what, and where outcomes are reported.

``add`` registers a source and, unless its RabbitMQ user exists already, creates that user with
write-only permission on the ingest exchange (through ``rabbitmqctl``, so run it on a RabbitMQ
node) and prints its password once; with ``--http-token`` it also prints an HTTP token once.
govnotify keeps neither: RabbitMQ keeps the password's hash, the registry a salted HMAC of the
token. ``--trace-any`` lets the source's token trace any id over the api (the 12345
hotline). ``--outcome-url`` (or ``set-outcome`` later) has the final status of every
notification its events caused POSTed there, signed; the signing key is printed once, and
``outcome-key`` prints it again (recorded). Every change is recorded in ``operator_audit``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from infra import audit
from infra.cli import exits
from infra.cli.options import Verbs, json_option, operator_option
from infra.cli.output import print_json, print_table
from infra.db import session
from infra.settings import get_settings
from infra.sources import (
    REGISTRY_TTL_S,
    SourceError,
    SourceNotFoundError,
    create_source,
    disable_source,
    find_source,
    list_sources,
    outcome_key,
    set_outcome_url,
    sources_of_user,
    types_of,
)

#: The ``operator_audit`` action of printing a source's outcome signing key again.
OUTCOME_KEY_ACTION = "sources.outcome-key"

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sources", help="register upstream sources: who may publish which events")
    verbs = Verbs(p)
    add = verbs.add(
        "add",
        _run(_add),
        "register a source, create its RabbitMQ user, print credentials once",
        operator_option(),
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
    add.add_argument(
        "--trace-any",
        action="store_true",
        help="its token may trace any id over the api (licenses, cases, mobiles, masked): "
        "for the 12345 hotline; without it, only the events it published",
    )
    add.add_argument(
        "--outcome-url",
        metavar="URL",
        help="POST the final status of what its events caused here, signed (prints the key once)",
    )
    verbs.add("list", _run(_list), "every source, its user and types (no secrets)", json_option())
    disable = verbs.add(
        "disable", _run(_disable), "refuse a source's events from now on", operator_option()
    )
    disable.add_argument("name")
    outcome = verbs.add(
        "set-outcome",
        _run(_set_outcome),
        "set (or with --none remove) a source's outcome webhook URL",
        operator_option(),
    )
    outcome.add_argument("name")
    outcome.add_argument("url", nargs="?", metavar="URL", help="http(s) URL that receives them")
    outcome.add_argument("--none", action="store_true", help="report no more outcomes")
    key = verbs.add(
        "outcome-key",
        _run(_outcome_key),
        "print a source's outcome signing key again (recorded)",
        operator_option("who asks (default: your login), for the audit"),
    )
    key.add_argument("name")


def _run(verb: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``verb`` with the registry's refusals as exit codes: 4 for no such source, else 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return verb(args)
        except SourceNotFoundError as exc:
            raise exits.CommandError(str(exc), exits.NOT_FOUND) from exc
        except SourceError as exc:
            raise exits.CommandError(str(exc), exits.USAGE) from exc

    return run


def _operator(args: argparse.Namespace) -> str:
    return audit.operator_name(args.operator)


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
        trace_any=args.trace_any,
        outcome_url=args.outcome_url,
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
    if row.trace_any:
        print("  Trace: its token may trace any id over the api (numbers masked)")
    if row.outcome_url:
        print(f"  Outcomes: POSTed to {row.outcome_url}")
        print(f"  Outcome signing key: {outcome_key(s, row.name)}")
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
                        "trace_any": r.trace_any,
                        "outcome_url": r.outcome_url,
                    }
                    for r in rows
                ]
            }
        )
        return exits.OK
    print_table(
        f"sources ({len(rows)})",
        ["source", "AMQP user", "HTTP", "trace", "outcomes", "created", "disabled", "event types"],
        [
            [
                r.name,
                r.amqp_user or "",
                "yes" if r.token_hash else "",
                "any" if r.trace_any else "",
                r.outcome_url or "",
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


def _set_outcome(args: argparse.Namespace) -> int:
    if args.none == bool(args.url):
        raise SourceError("give the outcome URL, or --none to remove it (not both)")
    s = get_settings()
    with session(s) as db:
        row = set_outcome_url(
            s, db, args.name, None if args.none else args.url, operator=_operator(args)
        )
    if row.outcome_url is None:
        print(f"source {row.name}: no outcome reports from now on (pending ones are dropped)")
        return exits.OK
    print(f"source {row.name}: outcomes POSTed to {row.outcome_url}")
    print(f"  Outcome signing key: {outcome_key(s, row.name)}")
    print("  Shown once here; `govnotify sources outcome-key` prints it again (recorded).")
    return exits.OK


def _outcome_key(args: argparse.Namespace) -> int:
    s = get_settings()
    with session(s) as db:
        row = find_source(db, args.name)
    if row is None:
        raise SourceNotFoundError(f"no source {args.name!r} (govnotify sources list)")
    key = outcome_key(s, row.name)
    # Recorded before it is shown.
    audit.record(s, _operator(args), OUTCOME_KEY_ACTION, row.name, "")
    print(key)
    return exits.OK
