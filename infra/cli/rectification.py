"""``govnotify rectification list [--department D]`` and ``close TICKET --outcome TEXT``."""

from __future__ import annotations

import argparse

from infra import audit
from infra.cli import exits
from infra.cli.options import Verbs, json_option, operator_option
from infra.cli.output import print_json, print_table
from infra.clock import Clock
from infra.settings import get_settings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rectification", help="list rectification tickets or close one")
    verbs = Verbs(p)
    listing = verbs.add(
        "list", _list, "the tickets, their deadlines and whether overdue", json_option()
    )
    listing.add_argument("--department", help="only this department's tickets")
    close = verbs.add(
        "close",
        _close,
        "close a ticket: its outcome is sent to a real-name citizen by SMS",
        json_option(),
        operator_option(),
    )
    close.add_argument("ticket", metavar="TICKET", help="ticket id")
    close.add_argument("--outcome", required=True, help="what was done (sent to the citizen)")


def _close(args: argparse.Namespace) -> int:
    # Imported once main() has applied --today, inside its SettingsError handling (exit 2):
    # lazy: workers.broker reads the settings as it is imported.
    from workers import rectification

    if not args.outcome:  # --outcome "": the citizen would be told nothing
        raise exits.CommandError("close needs a non-empty --outcome", exits.USAGE)
    s = get_settings()
    closed_at = Clock.from_settings(s).utcnow()
    if not rectification.request_close(s, args.ticket, args.outcome, closed_at):
        raise exits.CommandError(f"no rectification ticket {args.ticket}", exits.NOT_FOUND)
    audit.record(
        s,
        audit.operator_name(args.operator),
        "rectification.close",
        args.ticket,
        {"outcome": args.outcome},
    )
    if args.json:
        print_json({"ticket": args.ticket, "close_requested": True})
    else:
        print(f"ticket {args.ticket}: close requested")
    return exits.OK


def _list(args: argparse.Namespace) -> int:
    # lazy: as in _close, workers.broker reads the settings as it is imported.
    from workers import rectification

    s = get_settings()
    found = rectification.tickets(s, department=args.department)
    if args.json:
        print_json(
            {
                "tickets": [
                    {
                        "ticket": t.id,
                        "department": t.department,
                        "rating": t.rating,
                        "deadline_at": t.deadline_at,
                        "status": t.status,
                        "overdue": bool(t.overdue_at and t.status == "open"),
                    }
                    for t in found
                ]
            }
        )
        return exits.OK
    rows: list[list[object]] = []
    for t in found:
        state = t.status + (" (overdue)" if t.overdue_at and t.status == "open" else "")
        deadline = t.deadline_at.astimezone(s.tz)
        rows.append([t.id, t.department, t.rating, f"{deadline:%Y-%m-%d %H:%M}", state])
    print_table(
        "rectification tickets",
        ["ticket", "department", "rating", "deadline (local)", "status"],
        rows,
    )
    return exits.OK
