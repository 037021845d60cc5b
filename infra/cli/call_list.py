"""``govnotify call-list list|done``: the renewal calls staff owe, and recording one made."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING

from infra import audit
from infra.cli import exits
from infra.cli.options import Verbs, json_option, operator_option
from infra.cli.output import print_json, print_table
from infra.logging import mask_mobile, mask_name
from infra.settings import get_settings

if TYPE_CHECKING:
    from schemas.models import CallListEntry

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("call-list", help="renewal calls staff owe: list them, or record one done")
    verbs = Verbs(p)
    listing = verbs.add(
        "list",
        _list,
        "the calls owed, names and numbers masked unless --reveal",
        json_option(),
        operator_option("who asks; required with --reveal, and recorded in the audit"),
    )
    listing.add_argument(
        "--department", help="only this issuing department's entries (required with --reveal)"
    )
    listing.add_argument(
        "--status",
        choices=["open", "done", "cancelled", "all"],
        default="open",
        help="only entries in this status (default open)",
    )
    listing.add_argument(
        "--reveal",
        action="store_true",
        help="show names and numbers unmasked (needs --operator and --department; recorded)",
    )
    done = verbs.add(
        "done", _done, "record a call made (forward-only)", json_option(), operator_option()
    )
    done.add_argument("entry", metavar="ENTRY", help="entry id or unique prefix")
    done.add_argument("--outcome", help="what the call achieved")


def _rows(found: Iterable[CallListEntry], reveal: bool) -> list[list[object]]:
    out: list[list[object]] = []
    for e in found:
        name, mobile = e.holder_name or "", e.holder_mobile or ""
        if not reveal:
            name, mobile = (
                (mask_name(name) if name else ""),
                (mask_mobile(mobile) if mobile else ""),
            )
        out.append(
            [
                e.id[:8],
                e.issuing_department,
                e.license_id,
                name,
                mobile,
                e.expires_on.isoformat(),
                e.due_on.isoformat(),
                e.status,
                "yes" if e.notified_at else "",
            ]
        )
    return out


def _call_list_error(exc: Exception) -> exits.CommandError:
    # workers.call_list has one error type; "no call-list entry …" is the not-found case.
    code = exits.NOT_FOUND if str(exc).startswith("no call-list entry") else exits.USAGE
    return exits.CommandError(str(exc), code)


def _done(args: argparse.Namespace) -> int:
    # Imported once main() has applied --today, inside its SettingsError handling (exit 2):
    # lazy: workers.broker reads the settings as it is imported.
    from workers.call_list import CallListError, complete

    cfg = get_settings()
    try:
        entry = complete(cfg, args.entry, args.outcome)
    except CallListError as exc:
        raise _call_list_error(exc) from exc
    audit.record(
        cfg,
        audit.operator_name(args.operator),
        "call-list.done",
        entry.id,
        {"license_id": entry.license_id, "outcome": args.outcome or ""},
    )
    if args.json:
        print_json({"id": entry.id, "license_id": entry.license_id, "status": "done"})
    else:
        print(f"entry {entry.id[:8]} ({entry.license_id}) done")
    return exits.OK


def _list(args: argparse.Namespace) -> int:
    # lazy: as in _done, workers.broker reads the settings as it is imported.
    from workers.call_list import CallListError, entries, reveal

    cfg = get_settings()
    try:
        if args.reveal:
            found = reveal(
                cfg, operator=args.operator, department=args.department, status=args.status
            )
        else:
            found = entries(cfg, department=args.department, status=args.status)
    except CallListError as exc:
        raise _call_list_error(exc) from exc
    if args.json:
        headers = ["id", "department", "license_id", "holder", "mobile", "expires_on"]
        headers += ["due_on", "status", "sent"]
        print_json(
            {
                "status": args.status,
                "entries": [
                    {**dict(zip(headers, row, strict=True)), "id": e.id, "sent": bool(row[-1])}
                    for e, row in zip(found, _rows(found, args.reveal), strict=True)
                ],
            }
        )
        return exits.OK
    print_table(
        f"call list ({args.status or 'open'}): {len(found)} entries",
        ["id", "department", "license", "holder", "mobile", "expires", "due", "status", "sent"],
        _rows(found, args.reveal),
    )
    return exits.OK
