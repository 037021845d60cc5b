"""``govnotify suppression list|lift [MOBILE] [CATEGORY]``: numbers no longer texted."""

from __future__ import annotations

import argparse
import sys

from infra.cli.output import print_table
from infra.db import session
from infra.logging import mask_mobile
from infra.settings import get_settings
from schemas.phone import normalize_mobile
from workers import suppression

__all__ = ["cmd_suppression", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suppression", help="list suppressed numbers or lift a suppression")
    p.add_argument("action", choices=["list", "lift"])
    p.add_argument("mobile", nargs="?", help="mainland mobile number")
    p.add_argument("category", nargs="?", default=None, help="one category (default: all)")
    p.set_defaults(func=cmd_suppression)


def cmd_suppression(args: argparse.Namespace) -> int:
    s = get_settings()
    mobile = normalize_mobile(args.mobile) if args.mobile else None
    with session(s) as db:
        if args.action == "lift":
            if not mobile:
                print("govnotify: suppression lift needs a mobile number", file=sys.stderr)
                return 2
            n = suppression.lift(db, recipient=mobile, category=args.category, by="cli")
            print(f"{mask_mobile(mobile)}: {n} suppression(s) lifted")
            return 0
        rows = suppression.active(db, mobile)
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
    return 0
