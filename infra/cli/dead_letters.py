"""``govnotify dead-letters list|show|replay|purge``: read, replay or drop dead letters.

Each stage's replayer lives with its owner and registers itself with :mod:`infra.deadletters`
as its module is imported: this module imports them all (:data:`REPLAY_OWNERS`), so a replay
finds the replayer of every stage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable

from infra import audit, jobs
from infra.cli import exits
from infra.cli.options import Verbs, json_option, operator_option
from infra.cli.output import print_json, print_table
from infra.deadletters import (
    STAGES,
    DeadLetterError,
    ReplayOutcome,
    find_letters,
    list_letters,
    purge_letters,
    replay_letter,
)
from infra.logging import mask_pii
from infra.settings import Settings, get_settings
from producers import replay as ingest_replay
from schemas.models import DeadLetter
from workers import replay as worker_replay

__all__ = ["REPLAY_OWNERS", "register"]

#: The modules whose import registers the replayers: ingest, job, delivery and callback.
REPLAY_OWNERS = (ingest_replay, jobs, worker_replay)

#: How much of a letter's payload ``show`` prints.
RAW_SHOWN = 4000

#: What the verbs that take ids say of them.
IDS_HELP = "dead-letter ids (or unique prefixes)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dead-letters", help="list, show, replay or purge dead letters")
    verbs = Verbs(p)
    listing = verbs.add(
        "list", _run(_list), "the dead letters, most recently seen first", json_option()
    )
    _add_filters(listing)
    how_many = listing.add_mutually_exclusive_group()
    how_many.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most this many (default 50)"
    )
    how_many.add_argument("--all", action="store_true", help="every matching letter, no limit")

    show = verbs.add(
        "show", _run(_show), "letters' detail and payload, personal data masked", json_option()
    )
    show.add_argument("ids", nargs="+", metavar="ID", help=IDS_HELP)

    replay = verbs.add(
        "replay",
        _run(_replay),
        "send letters through their stage again (exit 1 if one is refused or fails)",
        json_option(),
        operator_option(),
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help=IDS_HELP)
    replay.add_argument(
        "--all", action="store_true", help="instead of ids: every open letter matching the filters"
    )
    _add_filters(replay, status_help="with --all: only this status (default open)")

    purge = verbs.add(
        "purge",
        _run(_purge),
        "delete letters for good, replayed or not",
        json_option(),
        operator_option(),
    )
    purge.add_argument("ids", nargs="*", metavar="ID", help=IDS_HELP)
    purge.add_argument(
        "--all", action="store_true", help="instead of ids: every letter matching the filters"
    )
    _add_filters(purge, status_help="with --all: only this status")
    purge.add_argument(
        "--older-than-days",
        type=float,
        metavar="N",
        help="with --all: only letters last seen over N days ago",
    )


def _add_filters(parser: argparse.ArgumentParser, status_help: str = "only this status") -> None:
    parser.add_argument("--stage", help=f"only this stage: {', '.join(STAGES)}")
    parser.add_argument("--reason", help="only this reason")
    parser.add_argument("--status", choices=["open", "replayed"], help=status_help)


def _run(
    verb: Callable[[Settings, argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """``verb`` on the settings, its stage checked and its errors given their exit codes."""

    def run(args: argparse.Namespace) -> int:
        stage = getattr(args, "stage", None)
        if stage and stage not in STAGES:
            print(
                f"govnotify: unknown stage {stage!r} (one of {', '.join(STAGES)})",
                file=sys.stderr,
            )
            return exits.USAGE
        try:
            return verb(get_settings(), args)
        except DeadLetterError as exc:
            # infra.deadletters has one error type; its "no dead letter …" is the not-found case.
            code = exits.NOT_FOUND if str(exc).startswith("no dead letter") else exits.USAGE
            raise exits.CommandError(str(exc), code) from exc

    return run


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _as_json(letter: DeadLetter) -> dict[str, object]:
    return {
        "id": letter.id,
        "stage": letter.stage,
        "reason": letter.reason,
        "event_type": letter.event_type,
        "event_id": letter.event_id,
        "count": letter.count,
        "first_seen": _iso(letter.first_seen),
        "last_seen": _iso(letter.last_seen),
        "status": letter.status,
        "replay_count": letter.replay_count,
        "replayed_at": _iso(letter.replayed_at),
    }


def _local(settings: Settings, value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return f"{value.astimezone(settings.tz):%Y-%m-%d %H:%M:%S}"


def _shown_raw(letter: DeadLetter) -> str:
    """The raw payload for a person to read: decoded, pretty if JSON, masked, bounded."""
    raw = bytes(letter.raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = repr(raw)
    else:
        try:
            text = json.dumps(json.loads(text), ensure_ascii=False, indent=2)
        except ValueError:
            pass
    if len(text) > RAW_SHOWN:
        text = text[:RAW_SHOWN] + f"\n… ({len(raw)} bytes in all)"
    return mask_pii(text)


def _list(settings: Settings, args: argparse.Namespace) -> int:
    letters = list_letters(
        settings,
        stage=args.stage,
        reason=args.reason,
        status=args.status,
        limit=None if args.all else args.limit,
    )
    if args.json:
        print_json({"dead_letters": [_as_json(letter) for letter in letters]})
        return exits.OK
    print_table(
        f"dead letters ({len(letters)} shown, most recent first)",
        ["id", "stage", "reason", "event type", "count", "first seen", "last seen", "status"],
        [
            [
                letter.id[:12],
                letter.stage,
                letter.reason,
                letter.event_type or "-",
                letter.count,
                _local(settings, letter.first_seen),
                _local(settings, letter.last_seen),
                letter.status + (f" ×{letter.replay_count}" if letter.replay_count > 1 else ""),
            ]
            for letter in letters
        ],
    )
    return exits.OK


def _show(settings: Settings, args: argparse.Namespace) -> int:
    if args.json:
        print_json(
            {
                "dead_letters": [
                    {**_as_json(letter), "detail": mask_pii(letter.detail)}
                    for letter in find_letters(settings, args.ids)
                ]
            }
        )
        return exits.OK
    for letter in find_letters(settings, args.ids):
        fields = {
            "id": letter.id,
            "stage": letter.stage,
            "reason": letter.reason,
            "event type": letter.event_type or "-",
            "event id": letter.event_id or "-",
            "count": str(letter.count),
            "first seen": _local(settings, letter.first_seen),
            "last seen": _local(settings, letter.last_seen),
            "status": letter.status,
            "replays": str(letter.replay_count),
            "replayed": _local(settings, letter.replayed_at),
        }
        for key, value in fields.items():
            print(f"{key:<11} {value}")
        print("detail")
        print("  " + mask_pii(letter.detail).replace("\n", "\n  "))
        print(f"raw ({len(bytes(letter.raw))} bytes, personal data masked)")
        print("  " + _shown_raw(letter).replace("\n", "\n  "))
        print()
    return exits.OK


def _selected(settings: Settings, args: argparse.Namespace, verb: str) -> list[DeadLetter]:
    if args.ids:
        return find_letters(settings, args.ids)
    if not args.all:
        raise DeadLetterError(f"{verb} needs dead-letter ids, or --all (with filters) for many")
    return list_letters(
        settings,
        stage=args.stage,
        reason=args.reason,
        status=args.status or "open",
        limit=None,
    )


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    outcomes = []
    operator = audit.operator_name(args.operator)
    for letter in _selected(settings, args, "replay"):
        try:
            outcome = replay_letter(settings, letter)
        except Exception as exc:
            # The broker or the database is unreachable: this letter stays open; go on.
            outcome = ReplayOutcome(
                letter.id, letter.stage, "failed", mask_pii(f"{type(exc).__name__}: {exc}")
            )
        outcomes.append(outcome)
        if outcome.result == "replayed":
            audit.record(
                settings,
                operator,
                "dead-letters.replay",
                letter.id,
                {"stage": letter.stage, "reason": letter.reason},
            )
        if not args.json:
            print(f"{outcome.letter_id[:12]} {outcome.stage}: {outcome.result}: {outcome.detail}")
    results = ("replayed", "skipped", "refused", "failed")
    counts = {r: sum(o.result == r for o in outcomes) for r in results}
    if args.json:
        print_json(
            {
                "outcomes": [
                    {"id": o.letter_id, "stage": o.stage, "result": o.result, "detail": o.detail}
                    for o in outcomes
                ],
                "counts": counts,
            }
        )
    else:
        print(", ".join(f"{n} {r}" for r, n in counts.items() if n or r == "replayed"))
    return exits.PARTIAL if counts["refused"] or counts["failed"] else exits.OK


def _purge(settings: Settings, args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        raise DeadLetterError(
            "purge needs dead-letter ids, or --all with --stage/--reason/--older-than-days"
        )
    n = purge_letters(
        settings,
        ids=args.ids,
        stage=args.stage,
        reason=args.reason,
        status=args.status,
        older_than_days=args.older_than_days,
    )
    audit.record(
        settings,
        audit.operator_name(args.operator),
        "dead-letters.purge",
        ",".join(args.ids) if args.ids else "--all",
        {
            "purged": n,
            "stage": args.stage,
            "reason": args.reason,
            "status": args.status,
            "older_than_days": args.older_than_days,
        },
    )
    if args.json:
        print_json({"purged": n})
    else:
        print(f"{n} dead letter{'' if n == 1 else 's'} purged")
    return exits.OK
