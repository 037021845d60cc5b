"""Evaluations (好差评) and the rectification (整改) of negative reviews.

Every evaluation is recorded (and stops a pending survey). A rating of 1 or 2 opens a ticket for
the responsible department with a deadline in Chinese working days, alerts the department head,
reminds before the deadline, flags it overdue after, and, when closed, tells a real-name citizen
the outcome by SMS. A real-name negative review also gets a follow-up callback task.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import TYPE_CHECKING, Any

import dramatiq
from prometheus_client import Counter
from sqlalchemy import select, update

import workers.broker  # noqa: F401  (declares the broker the actors below are bound to)
from infra.db import session
from notifiers.errors import PermanentDeliveryError
from notifiers.staff import StaffMessage
from notifiers.templates import load_templates
from schemas.commands import CloseRectificationJob, EvaluationJob
from schemas.models import (
    EvaluationRecord,
    Notification,
    NotificationStatus,
    RectificationTicket,
    utcnow,
)
from workers import ledger
from workers.callbacks import open_callback_task
from workers.context import current
from workers.delivery import RETRY_OPTIONS, attempt, create_from_template
from workers.jobs import parse_job
from workers.scheduled_jobs import cancel, schedule
from workers.staff import directory, notify_staff
from workers.surveys import survey_key

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "close_rectification",
    "flag_rectification_overdue",
    "record_evaluation",
    "remind_rectification",
    "request_close",
    "tickets",
]

log = logging.getLogger("govnotify.rectification")

FLOW = "rectification"
QUEUE = current().settings.queue("evaluations")
CLOSED = load_templates()["rectification_closed"]
#: Reminders go out at this local time on the working day before the deadline.
REMIND_AT = dt.time(9, 0)

TICKETS = Counter(
    "govnotify_rectification_tickets_total",
    "Rectification tickets by department and event (opened, overdue, closed).",
    ["department", "event"],
)


def _head(department: str) -> list[Any]:
    try:
        return [directory().department_head(department)]
    except KeyError:
        log.error("department %s not in the staff directory; alerting the centre", department)
        return [directory().service_points[0].hall_supervisor]


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def record_evaluation(job: dict[str, Any]) -> None:
    """Record a rating; stop the survey; open rectification and callback for a negative one."""
    settings = current().settings
    ev = parse_job(EvaluationJob, job, "record_evaluation")
    if ev is None:
        return
    with session(settings) as s:
        ledger.insert_ignore(
            s,
            EvaluationRecord.__table__,
            {
                "evaluation_id": ev.evaluation_id,
                "case_id": ev.case_id,
                "rating": ev.rating,
                "real_name": ev.real_name,
                "is_default": ev.is_default,
                "department": ev.department,
                "service_point_id": ev.service_point_id,
                "evaluated_at": ev.evaluated_at,
            },
            "evaluation_id",
        )
        # The citizen rated: no survey (a scheduled one is cancelled, a queued one re-checks).
        cancel(s, survey_key(ev.case_id))
        s.execute(
            update(Notification)
            .where(
                Notification.idempotency_key == survey_key(ev.case_id),
                Notification.status == NotificationStatus.CREATED,
            )
            .values(
                status=NotificationStatus.CANCELLED,
                status_reason="already evaluated",
                updated_at=utcnow(),
            )
        )
        s.commit()
    if ev.rating > 2:
        return
    _open_ticket(ev)
    if ev.real_name:
        head = _head(ev.department)[0]
        open_callback_task(
            case_id=ev.case_id,
            kind="negative_review",
            owner_staff_id=head.staff_id,
            owner_name=head.name,
            department=ev.department,
            service_item=ev.service_item or ev.case_id,
            due_at=ev.evaluated_at + dt.timedelta(seconds=settings.callback_due_after_s),
            event_id=ev.event_id,
        )


def _open_ticket(ev: EvaluationJob) -> None:
    settings = current().settings
    deadline_at = current().calendar.deadline(
        ev.evaluated_at, settings.rectification_workdays, settings.tz
    )
    key = f"rectification:{ev.evaluation_id}"
    with session(settings) as s:
        created = ledger.insert_ignore(
            s,
            RectificationTicket.__table__,
            {
                "id": uuid.uuid4().hex,
                "idempotency_key": key,
                "evaluation_id": ev.evaluation_id,
                "case_id": ev.case_id,
                "department": ev.department,
                "service_item": ev.service_item,
                "service_point_id": ev.service_point_id,
                "rating": ev.rating,
                "comment": ev.comment,
                "citizen_mobile": ev.citizen_mobile if ev.real_name else None,
                "status": "open",
                "opened_at": ev.evaluated_at,
                "deadline_at": deadline_at,
                "event_id": ev.event_id,
            },
            "idempotency_key",
        )
        ticket = s.execute(
            select(RectificationTicket).where(RectificationTicket.idempotency_key == key)
        ).scalar_one()
        remind_day = current().calendar.add_workdays(
            deadline_at.date(), -settings.rectification_remind_workdays
        )
        remind_at = dt.datetime.combine(remind_day, REMIND_AT, tzinfo=settings.tz)
        if settings.rectification_remind_workdays and remind_at > ev.evaluated_at:
            schedule(
                s,
                f"{key}:remind",
                remind_at,
                "remind_rectification",
                ticket.id,
                event_id=ev.event_id,
            )
        schedule(
            s,
            f"{key}:overdue",
            deadline_at,
            "flag_rectification_overdue",
            ticket.id,
            event_id=ev.event_id,
        )
    if not created:
        return
    TICKETS.labels(ev.department, "opened").inc()
    notify_staff(
        _head(ev.department),
        StaffMessage(
            message_id=ticket.id,
            kind="rectification_ticket",
            title="差评整改工单",
            text=(
                f"{ev.department}：办件{ev.case_id}（{ev.service_item}）收到{ev.rating}星差评，"
                f"请核实并于{deadline_at:%m月%d日}前完成整改、反馈。"
            ),
            data={
                "ticket_id": ticket.id,
                "case_id": ev.case_id,
                "rating": ev.rating,
                "deadline_at": deadline_at.isoformat(),
                "comment": ev.comment,
            },
        ),
        flow=FLOW,
    )


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def remind_rectification(ticket_id: str) -> None:
    """One working day before the deadline, if still open."""
    settings = current().settings
    with session(settings) as s:
        ticket = s.get(RectificationTicket, ticket_id)
    if ticket is None or ticket.status != "open" or ticket.reminded_at is not None:
        return
    deadline = ledger.as_utc(ticket.deadline_at).astimezone(settings.tz)
    notify_staff(
        _head(ticket.department),
        StaffMessage(
            message_id=f"{ticket.id}-remind",
            kind="rectification_reminder",
            title="差评整改即将到期",
            text=f"办件{ticket.case_id}的差评整改将于{deadline:%m月%d日}到期，请尽快完成并反馈。",
            data={"ticket_id": ticket.id, "deadline_at": deadline.isoformat()},
        ),
        flow=FLOW,
    )
    with session(settings) as s:
        s.execute(
            update(RectificationTicket)
            .where(RectificationTicket.id == ticket_id, RectificationTicket.status == "open")
            .values(reminded_at=current().clock.utcnow())
        )
        s.commit()


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def flag_rectification_overdue(ticket_id: str) -> None:
    """Past the deadline and still open: tell the department head, then mark it overdue.

    Sent before it is marked, as the reminder is: a retry after a webhook failure or a kill in
    between sends again (receivers de-duplicate by ``X-Govnotify-Id``) instead of finding the
    ticket already marked and never telling anyone.
    """
    settings = current().settings
    with session(settings) as s:
        ticket = s.get(RectificationTicket, ticket_id)
    if ticket is None or ticket.status != "open" or ticket.overdue_at is not None:
        return
    notify_staff(
        _head(ticket.department),
        StaffMessage(
            message_id=f"{ticket.id}-overdue",
            kind="rectification_overdue",
            title="差评整改已逾期",
            text=f"办件{ticket.case_id}的差评整改已超过期限仍未完成，请立即处理。",
            data={"ticket_id": ticket.id},
        ),
        flow=FLOW,
    )
    with session(settings) as s:
        result = s.execute(
            update(RectificationTicket)
            .where(
                RectificationTicket.id == ticket_id,
                RectificationTicket.status == "open",
                RectificationTicket.overdue_at.is_(None),
            )
            .values(overdue_at=current().clock.utcnow())
        )
        s.commit()
    if result.rowcount:
        TICKETS.labels(ticket.department, "overdue").inc()


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def close_rectification(job: dict[str, Any]) -> None:
    """Close a ticket with its outcome; tell a real-name citizen by SMS."""
    settings = current().settings
    close = parse_job(CloseRectificationJob, job, "close_rectification")
    if close is None:
        return
    with session(settings) as s:
        changed = s.execute(
            update(RectificationTicket)
            .where(RectificationTicket.id == close.ticket_id, RectificationTicket.status == "open")
            .values(status="closed", closed_at=close.closed_at, outcome=close.outcome)
        ).rowcount
        s.commit()
        ticket = s.get(RectificationTicket, close.ticket_id)
        if ticket is None:
            log.error("close_rectification: no ticket %s", close.ticket_id)
            return
        key = ticket.idempotency_key
        cancel(s, f"{key}:remind")
        cancel(s, f"{key}:overdue")
    if changed:
        TICKETS.labels(ticket.department, "closed").inc()
    if not ticket.citizen_mobile:
        return
    params = {
        "service_item": ticket.service_item or ticket.case_id,
        "department": ticket.department,
        "outcome": (ticket.outcome or close.outcome)[:60],
    }
    with session(settings) as s:
        row = create_from_template(
            s,
            CLOSED,
            params,
            key=f"rectification-closed:{ticket.id}",
            flow=FLOW,
            subject_id=ticket.case_id,
            recipient=ticket.citizen_mobile,
            category="rectification",
            event_at=close.closed_at,
            # The end of what the negative review caused (the ticket's event); its closing
            # came from the console, not from a source, so no outcome report is owed.
            event_id=ticket.event_id,
        )
    attempt(row)


# ---- tickets at the console (govnotify rectification) ----------------------------------------
def tickets(settings: Settings, *, department: str | None = None) -> list[RectificationTicket]:
    """Every rectification ticket (or one department's), soonest deadline first."""
    query = select(RectificationTicket).order_by(RectificationTicket.deadline_at)
    if department:
        query = query.where(RectificationTicket.department == department)
    with session(settings) as s:
        return list(s.execute(query).scalars().all())


def request_close(settings: Settings, ticket_id: str, outcome: str, closed_at: dt.datetime) -> bool:
    """Hand ``close_rectification`` the closing of a ticket; False when there is no such ticket.

    The worker closes it (forward-only: a closed ticket stays closed) and tells a real-name
    citizen the outcome.
    """
    with session(settings) as s:
        if s.get(RectificationTicket, ticket_id) is None:
            return False
    close_rectification.send(
        {"ticket_id": ticket_id, "outcome": outcome, "closed_at": closed_at.isoformat()}
    )
    return True
