"""``govnotify suppression list|lift [MOBILE] [CATEGORY]``: numbers no longer texted.

``lift`` is the verb ``opt-out lift`` uses too. It records its operator both on the suppression
(``lifted_by``) and in ``operator_audit`` (on the same session, committed right after the lift:
``workers.suppression.lift`` commits its own change, and a lift of nothing records nothing).
"""

from __future__ import annotations

import argparse

from infra import audit
from infra.cli import exits
from infra.cli.options import Verbs, json_option, operator_option
from infra.cli.output import print_json, print_table
from infra.db import session
from infra.logging import mask_mobile
from infra.settings import get_settings
from schemas.phone import normalize_mobile
from workers import suppression

__all__ = ["cmd_suppression", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suppression", help="list suppressed numbers or lift a suppression")
    verbs = Verbs(p)
    listing = verbs.add("list", _list, "active suppressions, newest first", json_option())
    listing.add_argument("mobile", nargs="?", help="only this mainland mobile number")
    lift = verbs.add(
        "lift",
        _lift,
        "text a suppressed number again (exit 4 when it was not suppressed)",
        json_option(),
        operator_option(),
    )
    lift.add_argument("mobile", help="mainland mobile number")
    lift.add_argument("category", nargs="?", default=None, help="one category (default: all)")


def _mobile(value: str) -> str:
    try:
        return normalize_mobile(value)
    except ValueError as exc:  # "123": a clear line and exit 2, not a traceback
        raise exits.CommandError(str(exc), exits.USAGE) from exc


def cmd_suppression(args: argparse.Namespace) -> int:
    return _lift(args) if args.action == "lift" else _list(args)


def _lift(args: argparse.Namespace) -> int:
    s = get_settings()
    mobile = _mobile(args.mobile)
    operator = audit.operator_name(args.operator)
    with session(s) as db:
        n = suppression.lift(db, recipient=mobile, category=args.category, by=operator)
        if n == 0:
            what = f"in {args.category}" if args.category else "in any category"
            raise exits.CommandError(
                f"{mask_mobile(mobile)} is not suppressed {what}", exits.NOT_FOUND
            )
        audit.add(
            db,
            operator,
            "suppression.lift",
            mask_mobile(mobile),
            {"category": args.category or "all", "lifted": n},
        )
        db.commit()
    if args.json:
        print_json({"mobile": mask_mobile(mobile), "category": args.category, "lifted": n})
    else:
        print(f"{mask_mobile(mobile)}: {n} suppression(s) lifted")
    return exits.OK


def _list(args: argparse.Namespace) -> int:
    s = get_settings()
    mobile = _mobile(args.mobile) if args.mobile else None
    with session(s) as db:
        rows = suppression.active(db, mobile)
    if args.json:
        print_json(
            {
                "suppressions": [
                    {
                        "mobile": mask_mobile(r.recipient),
                        "category": r.category,
                        "reason": r.reason,
                        "provider": r.provider,
                        "error_code": r.error_code,
                        "since": r.created_at,
                    }
                    for r in rows
                ]
            }
        )
        return exits.OK
    print_table(
        f"active suppressions ({len(rows)})",
        ["number", "category", "reason", "provider", "code", "since"],
        [
            [
                mask_mobile(r.recipient),
                r.category,
                r.reason,
                r.provider or "",
                r.error_code or "",
                f"{r.created_at.astimezone(s.tz):%Y-%m-%d %H:%M}",
            ]
            for r in rows
        ],
    )
    return exits.OK
