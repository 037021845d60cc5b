"""``govnotify opt-out add|remove|list MOBILE [CATEGORY]``: a citizen's refusals."""

from __future__ import annotations

import argparse
import sys

from infra.logging import mask_mobile
from infra.settings import get_settings
from workers import optouts

__all__ = ["cmd_opt_out", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("opt-out", help="record, lift or list a citizen's refusal of a category")
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("mobile", help="mainland mobile number")
    p.add_argument(
        "category",
        nargs="?",
        default="all",
        help="reminders, surveys, callbacks, rectification or all (default)",
    )
    p.set_defaults(func=cmd_opt_out)


def cmd_opt_out(args: argparse.Namespace) -> int:
    s = get_settings()
    try:
        if args.action == "add":
            n = optouts.record_opt_out(s, args.mobile, args.category)
            print(f"{mask_mobile(args.mobile)}: {n} categor{'y' if n == 1 else 'ies'} refused")
        elif args.action == "remove":
            n = optouts.lift_opt_out(s, args.mobile, args.category)
            print(f"{mask_mobile(args.mobile)}: {n} refusal(s) lifted")
        else:
            cats = optouts.list_opt_outs(s, args.mobile)
            print(f"{mask_mobile(args.mobile)}: " + (", ".join(sorted(cats)) or "no opt-outs"))
    except ValueError as exc:
        print(f"govnotify: {exc}", file=sys.stderr)
        return 2
    return 0
