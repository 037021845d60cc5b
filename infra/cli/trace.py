"""``govnotify trace ID``: where is my message, for an event, license or case id or a mobile.

Prints the chain :func:`infra.trace.trace` finds, oldest first, each step with its local time.
Mobile numbers, holders' names and free text are masked unless ``--reveal``, which needs
``--operator NAME`` and leaves an ``operator_audit`` row (``trace.reveal``).
"""

from __future__ import annotations

import argparse
import datetime as dt

from infra import audit
from infra.cli import exits
from infra.cli.output import add_json_flag, print_json
from infra.settings import Settings, get_settings
from infra.trace import Step, Trace, trace
from schemas.pii import mask_mobile, mask_name, mask_pii

__all__ = ["REVEAL_ACTION", "cmd_trace", "register"]

#: The ``operator_audit`` action of a revealed trace.
REVEAL_ACTION = "trace.reveal"

#: Fields holding free text a person wrote or a provider returned: masked unless revealed.
_FREE_TEXT = frozenset({"detail", "status_reason", "outcome"})


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


class _Shown:
    """How personal data is shown: masked, or as it is for an operator who revealed it."""

    def __init__(self, reveal: bool) -> None:
        self.reveal = reveal

    def mobile(self, value: str | None) -> str | None:
        return value if self.reveal or not value else mask_mobile(value)

    def name(self, value: str | None) -> str | None:
        return value if self.reveal or not value else mask_name(value)

    def text(self, value: str | None) -> str | None:
        return value if self.reveal or not value else mask_pii(value)

    def query(self, found: Trace) -> str:
        if found.mobile is None or self.reveal:
            return found.query
        return mask_pii(found.query) if found.query != found.mobile else mask_mobile(found.query)

    def fields(self, step: Step) -> dict[str, str | None]:
        return {k: self.text(v) if k in _FREE_TEXT else v for k, v in step.fields.items()}


def _local(settings: Settings, value: dt.datetime | None) -> str:
    return "-" if value is None else f"{value.astimezone(settings.tz):%Y-%m-%d %H:%M:%S}"


def _iso(settings: Settings, value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(settings.tz).isoformat()


def _as_json(settings: Settings, step: Step, shown: _Shown) -> dict[str, object]:
    return {
        "at": _iso(settings, step.at),
        "kind": step.kind,
        "ref": step.ref,
        "status": step.status,
        "summary": step.summary,
        "times": {k: _iso(settings, v) for k, v in step.times.items()},
        "fields": shown.fields(step),
        "mobile": shown.mobile(step.mobile),
        "name": shown.name(step.name),
    }


def _detail_line(settings: Settings, step: Step, shown: _Shown) -> str:
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
    shown = _Shown(args.reveal)
    if not found.found:
        raise exits.CommandError(f"nothing known about {shown.query(found)}", exits.NOT_FOUND)
    if args.reveal:
        # Recorded before anything is shown; the subject never holds the number itself.
        audit.record(
            settings,
            audit.operator_name(args.operator),
            REVEAL_ACTION,
            mask_pii(found.query),
            {"steps": len(found.steps), "subjects": list(found.subjects)},
        )
    if args.json:
        print_json(
            {
                "query": shown.query(found),
                "mobile": shown.mobile(found.mobile),
                "subjects": list(found.subjects),
                "revealed": args.reveal,
                "steps": [_as_json(settings, step, shown) for step in found.steps],
            }
        )
        return exits.OK
    following = f" (following {', '.join(found.subjects)})" if found.subjects else ""
    print(f"trace {shown.query(found)}: {len(found.steps)} steps, oldest first{following}")
    for step in found.steps:
        print(f"{_local(settings, step.at)}  {step.kind:<15} {step.status:<17} {step.summary}")
        print(f"{'':21}{_detail_line(settings, step, shown)}")
    return exits.OK
