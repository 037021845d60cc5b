"""Green-channel alerts (绿色通道): special-group applicants reach on-duty staff at once.

Alerts are critical: their own queue and the highest priority, so a backlog of surveys or
reminders never delays them; no quiet hours, no caps. Not acknowledged within
``green_escalate_after_s`` → escalated to the hall supervisor. The escalation is scheduled
before the first send: an alert its robot refuses for good (a dead letter) still reaches the
supervisor when it falls due. Every alert keeps its timestamps (event, sent, acknowledged,
escalated) for response times per service point.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING, Any

import dramatiq
from prometheus_client import Histogram
from sqlalchemy import select, update

import workers.broker  # noqa: F401  (declares the broker the actors below are bound to)
from infra.db import session
from notifiers.errors import PermanentDeliveryError
from notifiers.staff import StaffMessage
from schemas.commands import CaseJob, GreenChannelAckJob
from schemas.models import StaffAlert, utcnow
from workers import ledger
from workers.context import current
from workers.delivery import RETRY_OPTIONS, attempt, create_notification
from workers.jobs import parse_job
from workers.scheduled_jobs import cancel, schedule
from workers.staff import directory, notify_staff

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "PointResponses",
    "acknowledge_green_channel_alert",
    "escalate_green_channel_alert",
    "raise_green_channel_alert",
    "response_times",
]

log = logging.getLogger("govnotify.green_channel")

FLOW = "green_channel"
QUEUE = current().settings.queue("alerts")
#: dramatiq runs lower numbers first: alerts overtake every other job waiting in a worker.
PRIORITY = 0

GROUP_NAMES = {
    "elderly": "高龄老人",
    "disabled": "残障人士",
    "active_serviceman": "在役军人",
    "veteran": "退役军人",
    "pregnant": "孕妇",
}

ALERT_LATENCY = Histogram(
    "govnotify_green_channel_alert_seconds",
    "Time from the case event to the alert reaching the staff webhook.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
RESPONSE_TIME = Histogram(
    "govnotify_green_channel_response_seconds",
    "Time from the case event to staff acknowledging the alert.",
    ["service_point"],
    buckets=(30, 60, 120, 300, 600, 900, 1800, 3600),
)


def _escalation_key(case_id: str) -> str:
    return f"green-escalate:{case_id}"


@dramatiq.actor(
    queue_name=QUEUE, priority=PRIORITY, **RETRY_OPTIONS, throws=(PermanentDeliveryError,)
)
def raise_green_channel_alert(job: dict[str, Any]) -> None:
    """Schedule the escalation, then alert the service point's on-duty staff, once per case."""
    settings = current().settings
    case = parse_job(CaseJob, job, "raise_green_channel_alert")
    if case is None:
        return
    groups = "、".join(GROUP_NAMES.get(g, g) for g in case.special_groups)
    with session(settings) as s:
        ledger.insert_ignore(
            s,
            StaffAlert.__table__,
            {
                "id": uuid.uuid4().hex,
                "idempotency_key": f"green:{case.case_id}",
                "case_id": case.case_id,
                "service_point_id": case.service_point_id,
                "special_groups": ",".join(case.special_groups),
                "status": "created",
                "event_at": case.submitted_at,
                "created_at": utcnow(),
                "event_id": case.event_id,
            },
            "idempotency_key",
        )
        alert = s.execute(
            select(StaffAlert).where(StaffAlert.idempotency_key == f"green:{case.case_id}")
        ).scalar_one()
    if alert.sent_at is not None:
        return  # already sent (a replay or a redelivery)
    if alert.acknowledged_at is None:
        # Before the send, so a send that fails for good (a robot refusing the alert, a dead
        # letter) still escalates: the supervisor is told in time whatever happens below. An
        # acknowledgement that lands after this read cancels the job; escalate re-checks anyway.
        with session(settings) as s:
            schedule(
                s,
                _escalation_key(case.case_id),
                case.submitted_at + dt.timedelta(seconds=settings.green_escalate_after_s),
                "escalate_green_channel_alert",
                case.case_id,
                event_id=case.event_id,
            )
    # An acknowledgement processed first (it raced us) only stops the escalation: the
    # staff still get the alert, which is also the record of the special-group applicant.
    try:
        point = directory().service_point(case.service_point_id)
    except KeyError:
        # Unknown service point: the centre's supervisors must still hear about the applicant.
        point = directory().service_points[0]
        log.error(
            "green channel: service point %s is not in the staff directory; alerting %s",
            case.service_point_id,
            point.id,
        )
    message = StaffMessage(
        message_id=alert.id,
        kind="green_channel_alert",
        title="绿色通道提醒",
        text=(
            f"{groups}申请人（{case.applicant_name[:1]}**）在{case.service_point_name}"
            f"办理「{case.service_item}」，请立即优先接待：免取号、免排队，可帮办代办。"
            f"处理后请确认。"
        ),
        data={
            "case_id": case.case_id,
            "service_point_id": case.service_point_id,
            "special_groups": case.special_groups,
            "alert_id": alert.id,
        },
    )
    notify_staff(point.on_duty, message, flow=FLOW)
    if settings.green_channel_sms:
        _text_staff(point.on_duty, alert.id, case, groups)
    sent_at = current().clock.utcnow()
    with session(settings) as s:
        # sent_at is a fact whatever happened meanwhile (staff may acknowledge within ms).
        s.execute(
            update(StaffAlert)
            .where(StaffAlert.id == alert.id, StaffAlert.sent_at.is_(None))
            .values(sent_at=sent_at)
        )
        s.execute(
            update(StaffAlert)
            .where(StaffAlert.id == alert.id, StaffAlert.status == "created")
            .values(status="sent")
        )
        s.commit()
        acknowledged = s.execute(
            select(StaffAlert.acknowledged_at).where(StaffAlert.id == alert.id)
        ).scalar_one()
        if acknowledged is not None:
            # Acknowledged while we sent, maybe before the escalation above was written (so
            # the acknowledgement's own cancel found nothing): cancel it now. Any later
            # acknowledgement cancels it itself; escalate re-checks in any case.
            cancel(s, _escalation_key(case.case_id))
    ALERT_LATENCY.observe(max(0.0, (sent_at - case.submitted_at).total_seconds()))


def _text_staff(staff: Any, alert_id: str, case: CaseJob, groups: str) -> None:
    """The alert as a critical SMS to each on-duty staff member (once per alert and person)."""
    settings = current().settings
    body = (
        f"{settings.sms_signature}绿色通道：{groups}申请人在{case.service_point_name}"
        f"办理「{case.service_item}」，请立即优先接待。"
    )
    for person in staff:
        with session(settings) as s:
            row = create_notification(
                s,
                key=f"green-sms:{alert_id}:{person.staff_id}",
                flow=FLOW,
                subject_id=case.case_id,
                recipient=person.mobile,
                body=body,
                # Critical and staff-facing: no quiet hours, no cap, no citizen opt-out.
                category="",
                critical=True,
                event_at=case.submitted_at,
                event_id=case.event_id,
                event_source=case.event_source,
            )
        attempt(row)


@dramatiq.actor(
    queue_name=QUEUE, priority=PRIORITY, **RETRY_OPTIONS, throws=(PermanentDeliveryError,)
)
def acknowledge_green_channel_alert(job: dict[str, Any]) -> None:
    """Record the acknowledgement; the pending escalation never fires."""
    settings = current().settings
    ack = parse_job(GreenChannelAckJob, job, "acknowledge_green_channel_alert")
    if ack is None:
        return
    with session(settings) as s:
        cancel(s, _escalation_key(ack.case_id))
        # The acknowledgement may be processed before the alert (two worker threads): leave a
        # row saying so, and raise_green_channel_alert will find it and not alert again.
        ledger.insert_ignore(
            s,
            StaffAlert.__table__,
            {
                "id": uuid.uuid4().hex,
                "idempotency_key": f"green:{ack.case_id}",
                "case_id": ack.case_id,
                "service_point_id": ack.service_point_id,
                "special_groups": "",
                "status": "acknowledged",
                "event_at": ack.acknowledged_at,
                "acknowledged_at": ack.acknowledged_at,
                "acknowledged_by": ack.staff_id,
                "created_at": utcnow(),
                # Overtaken by its acknowledgement: the acknowledgement made the row.
                "event_id": ack.event_id,
            },
            "idempotency_key",
        )
        alert = s.execute(
            select(StaffAlert).where(StaffAlert.idempotency_key == f"green:{ack.case_id}")
        ).scalar_one()
        set_now = s.execute(
            update(StaffAlert)
            .where(StaffAlert.id == alert.id, StaffAlert.acknowledged_at.is_(None))
            .values(
                acknowledged_at=ack.acknowledged_at,
                acknowledged_by=ack.staff_id,
                # An escalated alert keeps saying so; its acknowledgement is still recorded.
                status="acknowledged" if alert.status != "escalated" else "escalated",
            )
        ).rowcount
        s.commit()
    if not set_now or alert.sent_at is None:
        return
    RESPONSE_TIME.labels(alert.service_point_id).observe(
        max(0.0, (ack.acknowledged_at - ledger.as_utc(alert.event_at)).total_seconds())
    )


@dramatiq.actor(
    queue_name=QUEUE, priority=PRIORITY, **RETRY_OPTIONS, throws=(PermanentDeliveryError,)
)
def escalate_green_channel_alert(case_id: str) -> None:
    """Not acknowledged in time: tell the hall supervisor."""
    settings = current().settings
    with session(settings) as s:
        alert = s.execute(
            select(StaffAlert).where(StaffAlert.case_id == case_id)
        ).scalar_one_or_none()
    if alert is None or alert.acknowledged_at is not None or alert.escalated_at is not None:
        return
    try:
        point = directory().service_point(alert.service_point_id)
    except KeyError:
        point = directory().service_points[0]
    waited = int(settings.green_escalate_after_s / 60) or 1
    notify_staff(
        [point.hall_supervisor],
        StaffMessage(
            message_id=f"{alert.id}-escalation",
            kind="green_channel_escalation",
            title="绿色通道超时未响应",
            text=f"{point.name}的绿色通道提醒已超过{waited}分钟未确认（办件{case_id}），请大厅主管立即协调。",
            data={
                "case_id": case_id,
                "service_point_id": alert.service_point_id,
                "alert_id": alert.id,
            },
        ),
        flow=FLOW,
    )
    with session(settings) as s:
        s.execute(
            update(StaffAlert)
            .where(StaffAlert.id == alert.id, StaffAlert.acknowledged_at.is_(None))
            .values(status="escalated", escalated_at=current().clock.utcnow())
        )
        s.commit()


# ---- response times, from the records (govnotify green-channel) -------------------------------
@dataclass(frozen=True)
class PointResponses:
    """The green-channel alerts of one service point, and how fast staff answered them."""

    service_point: str
    alerts: int
    #: Alerts acknowledged (with the time of their case event, so a response time is known).
    acknowledged: int
    escalated: int
    #: Minutes from the case event to the acknowledgement; None when none was acknowledged.
    median_minutes: float | None
    slowest_minutes: float | None


def response_times(settings: Settings) -> list[PointResponses]:
    """Every service point's alerts and response times, by service point id."""
    with session(settings) as s:
        alerts = s.execute(select(StaffAlert)).scalars().all()
    by_point: dict[str, list[StaffAlert]] = {}
    for alert in alerts:
        by_point.setdefault(alert.service_point_id, []).append(alert)
    out: list[PointResponses] = []
    for point, here in sorted(by_point.items()):
        waits = [
            (ledger.as_utc(a.acknowledged_at) - ledger.as_utc(a.event_at)).total_seconds() / 60
            for a in here
            if a.acknowledged_at and a.event_at
        ]
        out.append(
            PointResponses(
                service_point=point,
                alerts=len(here),
                acknowledged=len(waits),
                escalated=sum(a.escalated_at is not None for a in here),
                median_minutes=median(waits) if waits else None,
                slowest_minutes=max(waits) if waits else None,
            )
        )
    return out
