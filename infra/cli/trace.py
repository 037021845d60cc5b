"""``govnotify trace ID``: where is my message, for an event, license or case id or a mobile.

Prints the chain :func:`infra.trace.trace` finds, oldest first, each step with its local time.
For an event id, first exactly what that event caused, then the rest of its license's or
case's chain as context. Mobile numbers, holders' names and free text are masked unless
``--reveal``, which needs ``--operator NAME`` and leaves an ``operator_audit`` row
(``trace.reveal``).
"""

from __future__ import annotations

import argparse
import datetime as dt

from infra import audit
from infra.cli import exits
from infra.cli.output import add_json_flag, print_json
from infra.settings import Settings, get_settings
from infra.trace import Shown, Step, step_json, trace
from schemas.pii import mask_pii

__all__ = ["REVEAL_ACTION", "cmd_trace", "register"]

#: The ``operator_audit`` action of a revealed trace.
REVEAL_ACTION = "trace.reveal"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trace",
        help="where is my message: the chain for an event, license or case id, or a mobile",
    )
    p.add_argument(
        "id", metavar="ID", help="an upstream event id, a license or case id, or a mobile number"
    )
    p.add_argument(
        "--reveal",
        action="store_true",
        help="show numbers, names and reasons unmasked (needs --operator; recorded)",
    )
    p.add_argument("--operator", help="who reveals (required with --reveal), for the audit")
    add_json_flag(p)
    p.set_defaults(func=cmd_trace)


def _local(settings: Settings, value: dt.datetime | None) -> str:
    return "-" if value is None else f"{value.astimezone(settings.tz):%Y-%m-%d %H:%M:%S}"


def _detail_line(settings: Settings, step: Step, shown: Shown) -> str:
    """The step's other times and fields, one line: ``ref …; sent …; provider_ref …``."""
    parts = [f"ref {step.ref}"]
    if step.mobile:
        parts.append(f"to {shown.mobile(step.mobile)}")
    if step.name:
        parts.append(f"holder {shown.name(step.name)}")
    parts += [f"{k} {_local(settings, v)}" for k, v in step.times.items() if v and v != step.at]
    parts += [f"{k} {v}" for k, v in shown.fields(step).items() if v and v not in step.summary]
    return "; ".join(parts)


def cmd_trace(args: argparse.Namespace) -> int:
    if args.reveal and not (args.operator and args.operator.strip()):
        raise exits.CommandError("--reveal needs --operator NAME (it is recorded)", exits.USAGE)
    if not args.id.strip():
        raise exits.CommandError("trace needs an id", exits.USAGE)
    settings = get_settings()
    found = trace(settings, args.id)
    shown = Shown(args.reveal)
    if not found.found:
        raise exits.CommandError(f"nothing known about {shown.query(found)}", exits.NOT_FOUND)
    if args.reveal:
        # Recorded before anything is shown; the subject never holds the number itself.
        audit.record(
            settings,
            audit.operator_name(args.operator),
            REVEAL_ACTION,
            mask_pii(found.query),
            {"steps": len(found.caused) + len(found.steps), "subjects": list(found.subjects)},
        )
    if args.json:
        print_json(
            {
                "query": shown.query(found),
                "mobile": shown.mobile(found.mobile),
                "subjects": list(found.subjects),
                "revealed": args.reveal,
                "event": found.is_event,
                "caused": [step_json(step, settings.tz, shown) for step in found.caused],
                "steps": [step_json(step, settings.tz, shown) for step in found.steps],
            }
        )
        return exits.OK
    following = f" (following {', '.join(found.subjects)})" if found.subjects else ""
    if found.is_event:
        print(f"trace {found.query}: {len(found.caused)} steps caused by this event, oldest first")
        _print_steps(settings, found.caused, shown)
        if found.steps:
            print(f"context: {len(found.steps)} more steps, oldest first{following}")
    else:
        print(f"trace {shown.query(found)}: {len(found.steps)} steps, oldest first{following}")
    _print_steps(settings, found.steps, shown)
    return exits.OK


def _print_steps(settings: Settings, steps: tuple[Step, ...], shown: Shown) -> None:
    for step in steps:
        print(f"{_local(settings, step.at)}  {step.kind:<15} {step.status:<17} {step.summary}")
        print(f"{'':21}{_detail_line(settings, step, shown)}")
