"""Helpers for delivery tests on the real worker: settings with both provider fakes, and
notifications handed to the worker through the scheduler, the way the sweep and replays do.

Only the worker and the scheduler run (no relay, no stream): each test controls exactly which
messages exist, so provider traffic can be asserted one request at a time.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import select

from infra.db import session
from infra.settings import Settings, load_settings
from notifiers.sms.text import count_segments
from schemas.models import FINAL_STATUSES, Notification, NotificationStatus, Suppression
from tests.fakes.sms_gateway import FakeSmsGateway
from tests.fakes.twilio_server import FakeTwilio
from workers.scheduled_jobs import schedule

__all__ = [
    "GATEWAY_TEMPLATES",
    "TWILIO_FROM",
    "notification",
    "queue_sms",
    "settled",
    "suppressions",
    "with_providers",
]

TWILIO_FROM = "+15017122661"

#: Before any instant a test pins the pipeline's clock to: a job due then is due on every clock.
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
#: Approved texts at the fake gateway, and our template names mapped onto them.
GATEWAY_TEMPLATES = {
    "SMS_RECT_01": "您对${department}「${service_item}」的评价已处理：${outcome}",
    "SMS_RENEWAL_01": "您的${category_name}（证号${license_id}）将于${expires_on}到期。",
}


def with_providers(
    settings: Settings, twilio: FakeTwilio, gateway: FakeSmsGateway, **overrides: Any
) -> Settings:
    """``settings`` plus Twilio at ``twilio``, the gateway at ``gateway``, and test-sized
    retries and circuits; ``overrides`` win. Validated like any settings."""
    values: dict[str, Any] = {
        **settings.model_dump(),
        "twilio_account_sid": twilio.account_sid,
        "twilio_auth_token": twilio.auth_token,
        "twilio_from": TWILIO_FROM,
        "twilio_api_base": twilio.base_url,
        "gateway_url": gateway.base_url,
        "gateway_key_id": gateway.key_id,
        "gateway_secret": gateway.secret,
        "gateway_templates": {
            "rectification_closed": "SMS_RECT_01",
            "renewal_reminder": "SMS_RENEWAL_01",
        },
        "gateway_generic_template": "SMS_GENERIC",
        # Every test message may go out at any hour and as often as the test needs.
        "quiet_hours": "off",
        "sms_daily_cap": 0,
        "delivery_max_retries": 3,
        "delivery_min_backoff_ms": 100,
        "delivery_max_backoff_ms": 500,
        "circuit_window_s": 60.0,
        "circuit_min_requests": 3,
        "circuit_error_rate": 0.5,
        "circuit_cooldown_s": 3.0,
        **overrides,
    }
    return load_settings(**values)


def queue_sms(
    settings: Settings,
    *,
    flow: str,
    to: str,
    body: str,
    category: str = "",
    template: str | None = None,
    params: dict[str, str] | None = None,
) -> str:
    """Persist a ``created`` notification and schedule its delivery now; its id.

    "Now" on whatever clock the pipeline reads: the job is due since :data:`LONG_AGO`, not since
    this process's wall clock, which a pipeline pinned to an earlier instant (``GOVNOTIFY_NOW``)
    would see as the future and never run.
    """
    notification_id = uuid.uuid4().hex
    with session(settings) as s:
        s.add(
            Notification(
                id=notification_id,
                idempotency_key=f"test:{flow}:{notification_id}",
                flow=flow,
                channel="sms",
                subject_id=f"T-{notification_id[:8]}",
                recipient=to,
                body=body,
                segments=count_segments(body),
                status=NotificationStatus.CREATED,
                category=category,
                template=template,
                template_params=None if params is None else json.dumps(params, ensure_ascii=False),
            )
        )
        s.commit()
        schedule(
            s,
            f"deliver:{notification_id}",
            LONG_AGO,
            "deliver_notification",
            notification_id,
        )
    return notification_id


def notification(settings: Settings, notification_id: str) -> Notification:
    with session(settings) as s:
        row = s.get(Notification, notification_id)
        assert row is not None
        s.expunge(row)
        return row


def settled(settings: Settings, ids: list[str], *also: str) -> bool:
    """Every notification in ``ids`` is final (or in one of the statuses ``also``)."""
    wanted = set(FINAL_STATUSES) | {NotificationStatus.SENT, *also}
    with session(settings) as s:
        statuses = (
            s.execute(select(Notification.status).where(Notification.id.in_(ids))).scalars().all()
        )
    return len(statuses) == len(ids) and all(status in wanted for status in statuses)


def suppressions(settings: Settings) -> list[Suppression]:
    with session(settings) as s:
        rows = list(s.execute(select(Suppression)).scalars())
        for row in rows:
            s.expunge(row)
        return rows
