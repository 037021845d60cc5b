"""``govnotify opt-out add|lift|list MOBILE [CATEGORY]``: a citizen's refusals.

``lift`` is the verb ``suppression lift`` uses too; ``remove``, the verb before, is kept as its
alias so existing scripts keep working. ``add`` and ``lift`` record their operator in
``operator_audit`` (the number masked: the audit never holds a full phone number).
"""

from __future__ import annotations

import argparse

from infra import audit
from infra.cli import exits
from infra.cli.options import Verbs, json_option, operator_option
from infra.cli.output import print_json
from infra.logging import mask_mobile
from infra.settings import get_settings
from schemas.phone import normalize_mobile
from workers import optouts

__all__ = ["cmd_opt_out", "register"]

CATEGORY_HELP = "reminders, surveys, callbacks, rectification or all (default)"


def _mobile(value: str) -> str:
    """The normalised number, or exit 2 with why (never a traceback)."""
    try:
        return normalize_mobile(value)
    except ValueError as exc:
        raise exits.CommandError(str(exc), exits.USAGE) from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("opt-out", help="record, lift or list a citizen's refusal of a category")
    verbs = Verbs(p)
    add = verbs.add(
        "add",
        _add,
        "record that the citizen refuses a category (or all)",
        json_option(),
        operator_option(),
    )
    lift = verbs.add(
        "lift",
        _lift,
        "lift a refusal (exit 4 when there was none); 'remove' is an alias",
        json_option(),
        operator_option(),
        aliases=["remove"],
    )
    for parser in (add, lift):
        parser.add_argument("mobile", help="mainland mobile number")
        parser.add_argument("category", nargs="?", default="all", help=CATEGORY_HELP)
    listing = verbs.add("list", _list, "the categories a citizen refused", json_option())
    listing.add_argument("mobile", help="mainland mobile number")


def cmd_opt_out(args: argparse.Namespace) -> int:
    """Kept for callers of the former single entry point: dispatch on ``args.action``."""
    return {"add": _add, "lift": _lift, "remove": _lift, "list": _list}[args.action](args)


def _changed(args: argparse.Namespace, mobile: str, action: str, n: int, words: str) -> int:
    masked = mask_mobile(mobile)
    if args.json:
        print_json({"mobile": masked, "category": args.category, action: n})
    else:
        print(f"{masked}: {words}")
    return exits.OK


def _add(args: argparse.Namespace) -> int:
    s = get_settings()
    mobile = _mobile(args.mobile)
    try:
        n = optouts.record_opt_out(s, mobile, args.category)
    except ValueError as exc:  # an unknown category
        raise exits.CommandError(str(exc), exits.USAGE) from exc
    audit.record(
        s,
        audit.operator_name(args.operator),
        "opt-out.add",
        mask_mobile(mobile),
        {"category": args.category, "new": n},
    )
    return _changed(args, mobile, "refused", n, f"{n} categor{'y' if n == 1 else 'ies'} refused")


def _lift(args: argparse.Namespace) -> int:
    s = get_settings()
    mobile = _mobile(args.mobile)
    try:
        n = optouts.lift_opt_out(s, mobile, args.category)
    except ValueError as exc:
        raise exits.CommandError(str(exc), exits.USAGE) from exc
    if n == 0:
        raise exits.CommandError(
            f"{mask_mobile(mobile)} has no opt-out of {args.category} to lift", exits.NOT_FOUND
        )
    audit.record(
        s,
        audit.operator_name(args.operator),
        "opt-out.lift",
        mask_mobile(mobile),
        {"category": args.category, "lifted": n},
    )
    return _changed(args, mobile, "lifted", n, f"{n} refusal(s) lifted")


def _list(args: argparse.Namespace) -> int:
    mobile = _mobile(args.mobile)
    cats = sorted(optouts.list_opt_outs(get_settings(), mobile))
    if args.json:
        print_json({"mobile": mask_mobile(mobile), "categories": cats})
    else:
        print(f"{mask_mobile(mobile)}: " + (", ".join(cats) or "no opt-outs"))
    return exits.OK
