"""``govnotify retention purge [--days N] [--dry-run]``: personal data past retention."""

from __future__ import annotations

import argparse

from infra import audit
from infra.cli import exits
from infra.cli.options import Verbs, json_option, operator_option
from infra.cli.output import print_json, print_table
from infra.retention import purge
from infra.settings import get_settings

__all__ = ["cmd_retention", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retention", help="purge message bodies and recipients past retention")
    verb = Verbs(p).add(
        "purge",
        cmd_retention,
        "scrub message bodies and recipients older than the retention period",
        json_option(),
        operator_option(),
    )
    verb.add_argument(
        "--days", type=int, default=None, help="default GOVNOTIFY_RETENTION_DAYS (30)"
    )
    verb.add_argument("--dry-run", action="store_true", help="count what would be purged")


def cmd_retention(args: argparse.Namespace) -> int:
    settings = get_settings()
    days = settings.retention_days if args.days is None else args.days
    if days < 1:
        raise exits.CommandError("--days must be at least 1", exits.USAGE)
    counts = purge(settings, days=days, dry_run=args.dry_run)
    if not args.dry_run:
        audit.record(
            settings,
            audit.operator_name(args.operator),
            "retention.purge",
            f"older than {days} days",
            dict(counts),
        )
    if args.json:
        print_json({"days": days, "dry_run": args.dry_run, "rows": dict(counts)})
        return exits.OK
    verb = "would be purged" if args.dry_run else "purged"
    print_table(
        f"personal data older than {days} days: rows {verb}",
        ["table", "rows"],
        [[table, n] for table, n in counts.items()],
    )
    print(
        f"{sum(counts.values())} rows {verb}"
        + (" (dry run: nothing changed)" if args.dry_run else "")
    )
    return exits.OK
