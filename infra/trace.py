"""Where is my message: everything govnotify knows about one id, as a chain of steps in time.

The id may be an upstream event id, a license id, a case id (or an evaluation id) or a mobile
number. Every row an event causes keeps its ``event_id`` (the job carries it from the stream to
the worker), so an event id first finds exactly what that event caused (:attr:`Trace.caused`:
the accepted event, its jobs, notifications with every provider status and the outcome reports
owed to the source, staff tasks); then, as context, the rest of the chain of the license or case
it is about (its journal ``entity_key``, or the subject of what it caused once the journal row
is purged). A renewal reminder is what the license's latest registry event caused: the daily
scan only found that its day had come. A mobile number finds the notifications sent to it and
the staff tasks that hold it, then the events of the licenses and cases they are about.

Only reads, no printing: :mod:`infra.cli.trace` and the api's ``GET /trace/<id>`` format the
result. Each :class:`Step` keeps the personal data it shows (a mobile, a holder's name) in its
own fields, so the caller masks them (:class:`Shown`) unless an operator revealed them; free
text (reasons, outcomes) is masked there too.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from infra.db import session
from infra.settings import Settings
from schemas.events import FAMILIES
from schemas.models import (
    CallbackTask,
    CallListEntry,
    DeadLetter,
    IngestEvent,
    Notification,
    NotificationStatusEvent,
    OutcomeReport,
    RectificationTicket,
    ScheduledJob,
    StaffAlert,
)
from schemas.phone import normalize_mobile
from schemas.pii import mask_mobile, mask_name, mask_pii

__all__ = [
    "FREE_TEXT",
    "MAX_SUBJECTS",
    "Shown",
    "Step",
    "Trace",
    "event_sources",
    "step_json",
    "trace",
    "trace_in",
]

#: At most this many licenses and cases are followed from a mobile number: a number that
#: received messages about more than this is better traced by each id.
MAX_SUBJECTS = 50


@dataclass(frozen=True)
class Step:
    """One thing known about the id: an accepted event, a job, a message, a status, a task.

    ``at`` orders the chain (when the step began); ``times`` holds its other stamps (None when
    not reached). ``mobile`` and ``name`` are personal data, kept apart so they can be masked.
    """

    at: dt.datetime
    kind: str
    ref: str
    status: str
    summary: str
    times: dict[str, dt.datetime | None] = field(default_factory=dict)
    fields: dict[str, str | None] = field(default_factory=dict)
    mobile: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Trace:
    """The chain for ``query``, oldest first.

    ``caused`` is what the event ``query`` names caused (its own step first among them by
    time; empty when the query is no event id); ``steps`` the rest of the chain of the
    entities followed, as context. ``mobile`` is the E.164 number the query was read as (None
    when it is not a mobile); ``subjects`` the license and case ids followed.
    """

    query: str
    mobile: str | None
    subjects: tuple[str, ...]
    steps: tuple[Step, ...]
    caused: tuple[Step, ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.steps or self.caused)

    @property
    def is_event(self) -> bool:
        """True when ``query`` named an event (accepted, dead-lettered, or causing rows)."""
        return bool(self.caused)


def _mobile(query: str) -> str | None:
    try:
        return normalize_mobile(query)
    except ValueError:
        return None


def _events(s: Session, ids: Iterable[str], subjects: Iterable[str]) -> list[IngestEvent]:
    ids, subjects = list(ids), list(subjects)
    clauses = []
    if ids:
        clauses.append(IngestEvent.event_id.in_(ids))
    if subjects:
        # The family is named so the (family, entity_key) index is used.
        clauses.append(
            IngestEvent.family.in_(FAMILIES) & IngestEvent.entity_key.in_(subjects)  # type: ignore[attr-defined]
        )
    if not clauses:
        return []
    return list(s.execute(select(IngestEvent).where(or_(*clauses))).scalars())


def _key_part(key: str) -> ColumnElement[bool]:
    """``ScheduledJob.key`` has ``key`` as one of its colon-separated parts."""
    column = ScheduledJob.__table__.c.key
    return or_(
        column == key,
        column.startswith(f"{key}:", autoescape=True),
        column.endswith(f":{key}", autoescape=True),
        column.contains(f":{key}:", autoescape=True),
    )


def _event_step(e: IngestEvent) -> Step:
    return Step(
        at=e.received_at,
        kind="event",
        ref=e.event_id,
        status="applied" if e.applied_at else ("relayed" if e.relayed_at else "accepted"),
        summary=f"{e.event_type} {e.entity_key}",
        times={
            "occurred": e.occurred_at,
            "received": e.received_at,
            "relayed": e.relayed_at,
            "applied": e.applied_at,
        },
        fields={"event_type": e.event_type, "entity_key": e.entity_key, "epoch": str(e.epoch)},
    )


def _dead_letter_step(d: DeadLetter) -> Step:
    return Step(
        at=d.first_seen,
        kind="dead-letter",
        ref=d.id,
        status=d.status,
        summary=f"{d.stage} {d.reason}" + (f" ({d.event_type})" if d.event_type else ""),
        times={"first_seen": d.first_seen, "last_seen": d.last_seen, "replayed": d.replayed_at},
        fields={
            "stage": d.stage,
            "reason": d.reason,
            "event_id": d.event_id,
            "count": str(d.count),
            "detail": d.detail,
        },
    )


def _job_step(j: ScheduledJob) -> Step:
    return Step(
        at=j.created_at,
        kind="job",
        ref=j.key,
        status=j.status,
        summary=j.actor_name,
        times={"created": j.created_at, "run_at": j.run_at, "enqueued": j.enqueued_at},
        fields={"actor": j.actor_name, "event_id": j.event_id},
    )


def _notification_step(n: Notification) -> Step:
    via = f" via {n.provider}" if n.provider else ""
    return Step(
        at=n.created_at,
        kind="notification",
        ref=n.id,
        status=n.status,
        summary=f"{n.flow} {n.channel} about {n.subject_id}{via}",
        times={
            "created": n.created_at,
            "not_before": n.not_before,
            "sent": n.sent_at,
            "updated": n.updated_at,
        },
        fields={
            "flow": n.flow,
            "channel": n.channel,
            "subject_id": n.subject_id,
            "idempotency_key": n.idempotency_key,
            "provider": n.provider,
            "provider_ref": n.provider_ref,
            "status_reason": n.status_reason,
            "error_code": n.error_code,
            "event_id": n.event_id,
        },
        mobile=n.recipient,
    )


def _status_step(e: NotificationStatusEvent) -> Step:
    return Step(
        at=e.received_at,
        kind="provider-status",
        ref=e.notification_id or e.provider_ref,
        status=e.status,
        summary=f"{e.provider} said {e.provider_status} ({e.source})"
        + (f", error {e.error_code}" if e.error_code else ""),
        times={"received": e.received_at},
        fields={
            "provider": e.provider,
            "provider_ref": e.provider_ref,
            "provider_status": e.provider_status,
            "error_code": e.error_code,
            "source": e.source,
        },
    )


def _report_step(r: OutcomeReport) -> Step:
    attempts = f", {r.attempts} attempt{'s' if r.attempts != 1 else ''}" if r.attempts else ""
    return Step(
        at=r.created_at,
        kind="outcome-report",
        ref=r.id,
        status=r.state,
        summary=f"{r.status} of notification {r.notification_id} owed to {r.source}{attempts}",
        times={
            "reached": r.status_at,
            "created": r.created_at,
            "next_attempt": r.next_at if r.state == "pending" else None,
            "reported": r.reported_at,
        },
        fields={
            "notification_id": r.notification_id,
            "source": r.source,
            "flow": r.flow,
            "status": r.status,
            "reason": r.reason,
            "error_code": r.error_code,
            "last_error": r.last_error,
            "event_id": r.event_id,
        },
    )


def _callback_step(t: CallbackTask) -> Step:
    return Step(
        at=t.created_at,
        kind="callback-task",
        ref=t.id,
        status=t.status,
        summary=f"{t.kind} callback for case {t.case_id}, owner {t.owner_staff_id}",
        times={
            "created": t.created_at,
            "notified": t.notified_at,
            "due": t.due_at,
            "escalated": t.escalated_at,
            "completed": t.completed_at,
        },
        fields={
            "case_id": t.case_id,
            "department": t.department,
            "outcome": t.outcome,
            "event_id": t.event_id,
        },
    )


def _ticket_step(t: RectificationTicket) -> Step:
    return Step(
        at=t.opened_at,
        kind="rectification",
        ref=t.id,
        status=t.status,
        summary=f"rating {t.rating} on case {t.case_id}, {t.department}",
        times={
            "opened": t.opened_at,
            "deadline": t.deadline_at,
            "reminded": t.reminded_at,
            "overdue": t.overdue_at,
            "closed": t.closed_at,
        },
        fields={
            "case_id": t.case_id,
            "evaluation_id": t.evaluation_id,
            "department": t.department,
            "outcome": t.outcome,
            "event_id": t.event_id,
        },
        mobile=t.citizen_mobile,
    )


def _alert_step(a: StaffAlert) -> Step:
    return Step(
        at=a.created_at,
        kind="staff-alert",
        ref=a.id,
        status=a.status,
        summary=f"green channel for case {a.case_id} at {a.service_point_id} ({a.special_groups})",
        times={
            "event": a.event_at,
            "created": a.created_at,
            "sent": a.sent_at,
            "acknowledged": a.acknowledged_at,
            "escalated": a.escalated_at,
        },
        fields={
            "case_id": a.case_id,
            "service_point_id": a.service_point_id,
            "acknowledged_by": a.acknowledged_by,
            "status_reason": a.status_reason,
            "event_id": a.event_id,
        },
    )


def _call_list_step(c: CallListEntry) -> Step:
    return Step(
        at=c.created_at,
        kind="call-list",
        ref=c.id,
        status=c.status,
        summary=f"call {c.offset_days} days before {c.expires_on} for license {c.license_id}",
        times={"created": c.created_at, "notified": c.notified_at, "completed": c.completed_at},
        fields={
            "license_id": c.license_id,
            "department": c.issuing_department,
            "due_on": c.due_on.isoformat(),
            "outcome": c.outcome,
            "event_id": c.event_id,
        },
        mobile=c.holder_mobile,
        name=c.holder_name,
    )


#: Rows kept per notification: its provider statuses, the outcome reports owed for it.
PerNotification = TypeVar("PerNotification", NotificationStatusEvent, OutcomeReport)


def _of_notifications(
    s: Session, model: type[PerNotification], notification_ids: Iterable[str]
) -> list[PerNotification]:
    """The ``model`` rows of these notifications (``notification_id`` is indexed)."""
    ids = list(notification_ids)
    if not ids:
        return []
    query = select(model).where(model.notification_id.in_(ids))  # type: ignore[attr-defined]
    return list(s.execute(query).scalars())


def _caused_by(s: Session, event_id: str) -> tuple[list[Step], list[str]]:
    """The steps of what the event ``event_id`` caused (by the ``event_id`` its rows keep),
    and the license and case ids they are about. Each lookup is on an indexed column."""
    notifications = list(
        s.execute(select(Notification).where(Notification.event_id == event_id)).scalars()
    )
    jobs = s.execute(select(ScheduledJob).where(ScheduledJob.event_id == event_id)).scalars()
    alerts = list(s.execute(select(StaffAlert).where(StaffAlert.event_id == event_id)).scalars())
    callbacks = list(
        s.execute(select(CallbackTask).where(CallbackTask.event_id == event_id)).scalars()
    )
    tickets = list(
        s.execute(
            select(RectificationTicket).where(RectificationTicket.event_id == event_id)
        ).scalars()
    )
    calls = list(
        s.execute(select(CallListEntry).where(CallListEntry.event_id == event_id)).scalars()
    )
    steps = [_job_step(j) for j in jobs]
    steps += [_notification_step(n) for n in notifications]
    ids = [n.id for n in notifications]
    steps += [_status_step(e) for e in _of_notifications(s, NotificationStatusEvent, ids)]
    steps += [_report_step(r) for r in _of_notifications(s, OutcomeReport, ids)]
    steps += [_alert_step(a) for a in alerts]
    steps += [_callback_step(t) for t in callbacks]
    steps += [_ticket_step(t) for t in tickets]
    steps += [_call_list_step(c) for c in calls]
    subjects = [n.subject_id for n in notifications]
    subjects += [a.case_id for a in alerts] + [t.case_id for t in callbacks]
    subjects += [t.case_id for t in tickets] + [c.license_id for c in calls]
    return steps, subjects


def _ordered(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(sorted(steps, key=lambda step: (step.at, step.kind, step.ref)))


def trace_in(s: Session, query: str) -> Trace:
    """The chain for ``query`` read in ``s`` (see the module's docstring for what is followed)."""
    query = query.strip()
    if not query:
        # An empty id would match every job key by substring.
        raise ValueError("trace needs an id: an event, license or case id or a mobile number")
    mobile = _mobile(query)
    steps: list[Step] = []

    # 1. The id as given: an event id, a license, case or evaluation id.
    subjects: dict[str, None] = {query: None}
    events = {e.event_id: e for e in _events(s, [query], [query])}
    for e in events.values():
        subjects.setdefault(e.entity_key, None)

    # 1a. An event id: exactly what it caused, by the event id its rows keep.
    caused: list[Step] = []
    caused_subjects: list[str] = []
    if mobile is None:
        caused, caused_subjects = _caused_by(s, query)
        for subject in caused_subjects:
            subjects.setdefault(subject, None)
        own = events.get(query)
        letters = list(s.execute(select(DeadLetter).where(DeadLetter.event_id == query)).scalars())
        if own is not None:
            caused.append(_event_step(own))
        caused += [_dead_letter_step(d) for d in letters]

    # 2. A mobile: the messages sent to it and the tasks holding it name their subjects.
    notifications: dict[str, Notification] = {}
    tickets: dict[str, RectificationTicket] = {}
    calls: dict[str, CallListEntry] = {}
    if mobile is not None:
        notifications.update(
            (n.id, n)
            for n in s.execute(
                select(Notification).where(Notification.recipient == mobile)
            ).scalars()
        )
        tickets.update(
            (t.id, t)
            for t in s.execute(
                select(RectificationTicket).where(RectificationTicket.citizen_mobile == mobile)
            ).scalars()
        )
        calls.update(
            (c.id, c)
            for c in s.execute(
                select(CallListEntry).where(CallListEntry.holder_mobile == mobile)
            ).scalars()
        )
        related = [n.subject_id for n in notifications.values()]
        related += [t.case_id for t in tickets.values()]
        related += [c.license_id for c in calls.values()]
        for subject in related:
            if len(subjects) > MAX_SUBJECTS:
                break
            subjects.setdefault(subject, None)
    if len(subjects) > 1:
        # The other events of the licenses and cases followed: the rest of their chain.
        events.update((e.event_id, e) for e in _events(s, [], list(subjects)))
    keys = list(subjects)

    # 3. What the subjects caused.
    notifications.update(
        (n.id, n)
        for n in s.execute(select(Notification).where(Notification.subject_id.in_(keys))).scalars()
    )
    tickets.update(
        (t.id, t)
        for t in s.execute(
            select(RectificationTicket).where(
                or_(
                    RectificationTicket.case_id.in_(keys),
                    RectificationTicket.evaluation_id.in_(keys),
                )
            )
        ).scalars()
    )
    calls.update(
        (c.id, c)
        for c in s.execute(
            select(CallListEntry).where(CallListEntry.license_id.in_(keys))
        ).scalars()
    )
    letters = s.execute(
        select(DeadLetter).where(DeadLetter.event_id.in_([query, *events]))
    ).scalars()
    # Job keys embed the license or case id as a colon-separated part (``survey:C-1``,
    # ``callback:C-1:key_project``): matched as a whole part, so ``C-1`` finds neither
    # ``LIC-1``'s jobs nor ``C-10``'s, and escaped so an id's ``_`` or ``%`` is no wildcard.
    jobs = s.execute(select(ScheduledJob).where(or_(*(_key_part(k) for k in keys)))).scalars()
    callbacks = s.execute(select(CallbackTask).where(CallbackTask.case_id.in_(keys))).scalars()
    alerts = s.execute(select(StaffAlert).where(StaffAlert.case_id.in_(keys))).scalars()

    steps += [_event_step(e) for e in events.values()]
    steps += [_dead_letter_step(d) for d in letters]
    steps += [_job_step(j) for j in jobs]
    steps += [_notification_step(n) for n in notifications.values()]
    steps += [_status_step(e) for e in _of_notifications(s, NotificationStatusEvent, notifications)]
    steps += [_report_step(r) for r in _of_notifications(s, OutcomeReport, notifications)]
    steps += [_callback_step(t) for t in callbacks]
    steps += [_ticket_step(t) for t in tickets.values()]
    steps += [_alert_step(a) for a in alerts]
    steps += [_call_list_step(c) for c in calls.values()]
    # What the event caused is shown first; the context is the rest, each step once.
    shown_first = {(step.kind, step.ref, step.at) for step in caused}
    context = [step for step in steps if (step.kind, step.ref, step.at) not in shown_first]
    named_other = mobile is not None or bool(caused)
    followed = tuple(k for k in keys if k not in events and not (named_other and k == query))
    return Trace(
        query=query,
        mobile=mobile,
        subjects=followed,
        steps=_ordered(context),
        caused=_ordered(caused),
    )


def trace(settings: Settings, query: str) -> Trace:
    """The chain for ``query`` on the configured database (see :func:`trace_in`)."""
    with session(settings) as s:
        return trace_in(s, query)


def event_sources(s: Session, event_id: str) -> set[str]:
    """The sources that published the event ``event_id``: its journal row's envelope, or,
    once that row is purged, the source its notifications keep. Empty when unknown."""
    found: set[str] = set()
    row = s.get(IngestEvent, event_id)
    if row is not None:
        try:
            source = json.loads(bytes(row.body)).get("source")
        except (ValueError, AttributeError):
            source = None
        if isinstance(source, str) and source:
            found.add(source)
    found.update(
        src
        for src in s.execute(
            select(Notification.event_source)
            .where(Notification.event_id == event_id, Notification.event_source.is_not(None))
            .distinct()
        ).scalars()
        if src
    )
    return found


# ---- showing a trace: masked unless revealed -----------------------------------------------------
#: Fields holding free text a person wrote or a provider returned: masked unless revealed.
FREE_TEXT = frozenset({"detail", "status_reason", "outcome"})


class Shown:
    """How personal data is shown: masked, or as it is for an operator who revealed it."""

    def __init__(self, reveal: bool = False) -> None:
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
        return {k: self.text(v) if k in FREE_TEXT else v for k, v in step.fields.items()}


def step_json(step: Step, tz: dt.tzinfo, shown: Shown) -> dict[str, Any]:
    """One step as JSON data: times in ``tz`` (ISO 8601), personal data as ``shown``."""

    def iso(value: dt.datetime | None) -> str | None:
        return None if value is None else value.astimezone(tz).isoformat()

    return {
        "at": iso(step.at),
        "kind": step.kind,
        "ref": step.ref,
        "status": step.status,
        "summary": step.summary,
        "times": {k: iso(v) for k, v in step.times.items()},
        "fields": shown.fields(step),
        "mobile": shown.mobile(step.mobile),
        "name": shown.name(step.name),
    }
