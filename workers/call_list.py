"""Renewal call lists (续证提醒电话清单) reach the issuing departments.

Three days before a license expires its holder goes on the issuing department's call list
(``workers.reminders.add_call_list_entry``). On every working day at
``GOVNOTIFY_CALL_LIST_DIGEST_AT`` (09:00) each department head gets, through the department's
robot, the entries due and not sent before: category, license, holder and expiry. Names and
numbers are masked there (robots post to group chats); staff at the console see them whole with
``govnotify call-list list --reveal --operator NAME --department DEPT`` (:func:`reveal`: one
department's entries, with an ``operator_audit`` row saying who saw how many, never which
numbers) and record the call with ``govnotify call-list done``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dramatiq
from sqlalchemy import func, select, update

import workers.broker  # noqa: F401  (declares the broker the actors below are bound to)
from infra.db import session
from infra.logging import mask_mobile, mask_name
from notifiers.errors import DeliveryError, PermanentDeliveryError
from notifiers.staff import StaffMessage
from schemas.categories import load_categories
from schemas.models import CallListEntry, OperatorAudit
from workers.context import current
from workers.delivery import RETRY_OPTIONS
from workers.scheduled_jobs import schedule
from workers.staff import directory, notify_staff, retry_first

if TYPE_CHECKING:
    from infra.clock import Clock
    from infra.settings import Settings
    from infra.workdays import WorkdayCalendar
    from schemas.staff import Staff

__all__ = [
    "CallListError",
    "DigestLine",
    "chunk_lines",
    "complete",
    "digest_days",
    "entries",
    "open_counts",
    "reveal",
    "schedule_digests",
    "send_call_list_digests",
]

log = logging.getLogger("govnotify.call_list")

FLOW = "call_list"
#: The ``operator_audit`` action of a reveal.
REVEAL_ACTION = "call-list.reveal"
#: Budget of one robot message's text in UTF-8 bytes: WeCom takes 2,048 for title and text.
MESSAGE_BYTES = 1800


class CallListError(Exception):
    """Raised when a call-list command names no entry, or one that is not open."""


@dataclass(frozen=True)
class DigestLine:
    """One entry as the digest shows it (masked)."""

    entry_id: str
    license_id: str
    text: str


def digest_days(now: dt.datetime, calendar: WorkdayCalendar) -> list[dt.date]:
    """The digests to have scheduled at local ``now``: today's, if it is a working day (even
    past its hour: a scheduler started at noon still sends it). The scheduler asks again each
    new day, so nothing waits days ahead in the table."""
    today = now.date()
    return [today] if calendar.is_workday(today) else []


def schedule_digests(settings: Settings, clock: Clock, calendar: WorkdayCalendar) -> list[str]:
    """Schedule the digests of :func:`digest_days` (once per day by key); returns new keys."""
    now = clock.now()
    new = []
    with session(settings) as s:
        for day in digest_days(now, calendar):
            key = f"call-list-digest:{day.isoformat()}"
            run_at = dt.datetime.combine(day, settings.call_list_digest_at, tzinfo=settings.tz)
            if schedule(s, key, run_at, "send_call_list_digests", day.isoformat()):
                new.append(key)
    return new


def _line(number: int, entry: CallListEntry) -> str:
    categories = load_categories()
    category = categories[entry.category].name_zh if entry.category in categories else ""
    holder = mask_name(entry.holder_name) if entry.holder_name else "（已清除）"
    mobile = mask_mobile(entry.holder_mobile) if entry.holder_mobile else "（已清除）"
    return (
        f"{number}. {category}{entry.license_id}｜{holder} {mobile}｜"
        f"{entry.expires_on:%m月%d日}到期"
    )


def chunk_lines(lines: Sequence[DigestLine], budget: int = MESSAGE_BYTES) -> list[list[DigestLine]]:
    """Consecutive groups of ``lines`` whose texts fit ``budget`` UTF-8 bytes (with newlines)."""
    chunks: list[list[DigestLine]] = []
    size = 0
    for line in lines:
        cost = len(line.text.encode()) + 1
        if chunks and size + cost <= budget:
            chunks[-1].append(line)
            size += cost
        else:
            chunks.append([line])
            size = cost
    return chunks


def _recipient(department: str) -> Staff:
    try:
        return directory().department_head(department)
    except KeyError:
        log.error(
            "department %s not in the staff directory; sending its call list to the hall",
            department,
        )
        return directory().service_points[0].hall_supervisor


def _send_department(department: str, entries: list[CallListEntry], day: dt.date) -> None:
    """Send one department's digest (several messages when long), then mark its entries."""
    settings = current().settings
    lines = [DigestLine(e.id, e.license_id, _line(i, e)) for i, e in enumerate(entries, start=1)]
    chunks = chunk_lines(lines)
    # The ids name the entries carried: a retry resends the same ids (receivers de-duplicate),
    # new entries later the same day make new ones.
    digest = hashlib.sha256("".join(e.id for e in entries).encode()).hexdigest()[:12]
    head = _recipient(department)
    for k, chunk in enumerate(chunks, start=1):
        part = f"（{k}/{len(chunks)}）" if len(chunks) > 1 else ""
        notify_staff(
            [head],
            StaffMessage(
                message_id=f"call-list-{day.isoformat()}-{digest}-{k}",
                kind="call_list",
                title=f"续证提醒电话清单{part}",
                text=f"{head.name}：以下{len(entries)}户许可证即将到期，请安排电话提醒办理续证"
                f"（{day:%m月%d日}）。完整号码：govnotify call-list list --reveal "
                f"--operator 姓名 --department {department}\n"
                + "\n".join(line.text for line in chunk),
                data={
                    "department": department,
                    "day": day.isoformat(),
                    "entries": [
                        {"entry_id": line.entry_id, "license_id": line.license_id} for line in chunk
                    ],
                },
            ),
            flow=FLOW,
        )
    with session(settings) as s:
        s.execute(
            update(CallListEntry)
            .where(
                CallListEntry.id.in_([e.id for e in entries]),
                CallListEntry.notified_at.is_(None),
            )
            .values(notified_at=current().clock.utcnow())
        )
        s.commit()
    log.info("call list for %s: %d entries in %d messages", department, len(entries), len(chunks))


@dramatiq.actor(
    queue_name=current().settings.queue("reminders"),
    **RETRY_OPTIONS,
    throws=(PermanentDeliveryError,),
)
def send_call_list_digests(day: str) -> None:
    """Each department's open entries due by ``day`` and not sent yet, to its head.

    A department whose robot fails does not hold up the others; the first failure is raised
    after all were tried, so the retry sends only what is still unsent.
    """
    settings = current().settings
    on = dt.date.fromisoformat(day)
    with session(settings) as s:
        entries = (
            s.execute(
                select(CallListEntry)
                .where(
                    CallListEntry.status == "open",
                    CallListEntry.notified_at.is_(None),
                    CallListEntry.due_on <= on,
                )
                .order_by(CallListEntry.expires_on, CallListEntry.license_id)
            )
            .scalars()
            .all()
        )
    by_department: dict[str, list[CallListEntry]] = defaultdict(list)
    for entry in entries:
        by_department[entry.issuing_department].append(entry)
    first_error: DeliveryError | None = None
    for department, group in sorted(by_department.items()):
        try:
            _send_department(department, group, on)
        except DeliveryError as exc:
            first_error = retry_first(first_error, exc)
    if first_error is not None:
        raise first_error


# ---- govnotify call-list ----------------------------------------------------------------------
def _find(s: Any, ident: str) -> CallListEntry:
    rows = (
        s.execute(select(CallListEntry).where(CallListEntry.id.startswith(ident)).limit(2))
        .scalars()
        .all()
    )
    if not rows:
        raise CallListError(f"no call-list entry {ident!r}")
    if len(rows) > 1:
        raise CallListError(f"{ident!r} names more than one entry; give more of the id")
    return rows[0]


def complete(settings: Settings, ident: str, outcome: str | None) -> CallListEntry:
    """Record the call of an open entry (forward-only: a done or cancelled one stays so)."""
    with session(settings) as s:
        entry = _find(s, ident)
        result = s.execute(
            update(CallListEntry)
            .where(CallListEntry.id == entry.id, CallListEntry.status == "open")
            .values(status="done", completed_at=current().clock.utcnow(), outcome=outcome)
        )
        s.commit()
        if result.rowcount != 1:
            raise CallListError(f"entry {entry.id[:8]} is {entry.status}, not open")
        s.refresh(entry)
        return entry


def entries(
    settings: Settings, *, department: str | None, status: str | None
) -> list[CallListEntry]:
    with session(settings) as s:
        query = select(CallListEntry).order_by(CallListEntry.due_on, CallListEntry.license_id)
        if department:
            query = query.where(CallListEntry.issuing_department == department)
        if status != "all":
            query = query.where(CallListEntry.status == (status or "open"))
        return list(s.execute(query).scalars().all())


def _audit_word(value: str | None, what: str, limit: int) -> str:
    """``value`` stripped, or CallListError saying what is wrong (never echoing it whole)."""
    word = (value or "").strip()
    if not word:
        raise CallListError(
            f"list --reveal needs {what}: full names and numbers are shown only to a named "
            "operator, for one department, and each reveal is recorded"
        )
    if len(word) > limit or not word.isprintable():
        raise CallListError(f"{what} must be at most {limit} printable characters")
    return word


def reveal(
    settings: Settings, *, operator: str | None, department: str | None, status: str | None
) -> list[CallListEntry]:
    """One department's entries with names and numbers, recorded in ``operator_audit``.

    The audit row (operator, the OS user, department, status asked, how many entries) is
    committed with the read, so a reveal that returned rows is never unrecorded.
    """
    who = _audit_word(operator, "--operator NAME", 64)
    dept = _audit_word(department, "--department DEPT (one issuing department)", 200)
    with session(settings) as s:
        query = (
            select(CallListEntry)
            .where(CallListEntry.issuing_department == dept)
            .order_by(CallListEntry.due_on, CallListEntry.license_id)
        )
        if status != "all":
            query = query.where(CallListEntry.status == (status or "open"))
        found = list(s.execute(query).scalars().all())
        try:
            account = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (a bare container)
            account = "unknown"
        s.add(
            OperatorAudit(
                operator=who,
                action=REVEAL_ACTION,
                subject=dept,
                detail=f"revealed {len(found)} entries (status {status or 'open'}); "
                f"os user {account}",
            )
        )
        s.commit()
    log.info("call list of %s revealed to %s: %d entries", dept, who, len(found))
    return found


def open_counts(settings: Settings) -> dict[str, int]:
    """Open entries per issuing department."""
    with session(settings) as s:
        rows = s.execute(
            select(CallListEntry.issuing_department, func.count())
            .where(CallListEntry.status == "open")
            .group_by(CallListEntry.issuing_department)
        ).all()
    return {department: count for department, count in rows}
