"""Builders shared by the case-flow tests (tests/integration/<flow>/): the worker environment
with the loopback Twilio and the staff directory, case and evaluation events, rows of a table
and the text of a staff webhook."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from schemas.events import Event, make_event
from tests.fakes.twilio_server import FakeTwilio

CST = dt.timezone(dt.timedelta(hours=8))


def env(fake_twilio: FakeTwilio, directory: Path, now: dt.datetime, **extra: str) -> dict:
    return {
        "GOVNOTIFY_TWILIO_ACCOUNT_SID": fake_twilio.account_sid,
        "GOVNOTIFY_TWILIO_AUTH_TOKEN": fake_twilio.auth_token,
        "GOVNOTIFY_TWILIO_FROM": "+15017122661",
        "GOVNOTIFY_TWILIO_API_BASE": fake_twilio.base_url,
        "GOVNOTIFY_STAFF_DIRECTORY": str(directory),
        "GOVNOTIFY_NOW": now.isoformat(),
        "GOVNOTIFY_GREEN_ESCALATE_AFTER_S": "3",
        "GOVNOTIFY_SURVEY_DELAY_S": "2",
        "GOVNOTIFY_CALLBACK_DUE_AFTER_S": "3",
        **extra,
    }


def case_event(
    event_type: str,
    case_id: str,
    at: dt.datetime,
    *,
    mobile: str = "13900000001",
    point: tuple[str, str, str] = ("SC-CHANGAN", "长安区政务服务中心", "service_centre"),
    groups: tuple[str, ...] = (),
    age: int | None = None,
    key_project: bool = False,
    department: str = "市场监督管理局",
) -> Event:
    payload: dict[str, Any] = {
        "case_id": case_id,
        "service_item": "食品经营许可证核发",
        "department": department,
        "service_point": {"id": point[0], "name": point[1], "level": point[2]},
        "applicant": {
            "kind": "enterprise" if key_project else "citizen",
            "name": "西安长安科技有限公司" if key_project else "王秀英",
            "mobile": mobile,
            "age": age,
            "special_groups": list(groups),
        },
        "key_project": key_project,
        "submitted_at": (at - dt.timedelta(hours=1)).isoformat(),
    }
    if key_project:
        payload["project_steward"] = {
            "staff_id": "STW-01",
            "name": "刘管家",
            "mobile": "13800130099",
            "department": department,
        }
    if event_type == "case.completed":
        payload["completed_at"] = at.isoformat()
    else:
        payload["submitted_at"] = at.isoformat()
    return make_event(event_type, payload, source="case-system", occurred_at=at)


def evaluation(
    case_id: str,
    rating: int,
    at: dt.datetime,
    *,
    real_name: bool = True,
    mobile: str | None = "13900000009",
    department: str = "市场监督管理局",
) -> Event:
    return make_event(
        "evaluation.submitted",
        {
            "evaluation_id": f"EV-{case_id}-{uuid.uuid4().hex[:6]}",
            "case_id": case_id,
            "rating": rating,
            "real_name": real_name,
            "citizen_mobile": mobile if real_name else None,
            "comment": "等待时间太长" if rating <= 2 else "",
            "department": department,
            "service_point_id": "SC-CHANGAN",
            "evaluated_at": at.isoformat(),
        },
        source="evaluation-system",
        occurred_at=at,
    )


def rows(settings: Settings, model, *where) -> list:  # type: ignore[no-untyped-def]
    with session(settings) as s:
        return list(s.execute(select(model).where(*where)).scalars())


def content(request) -> str:  # type: ignore[no-untyped-def]
    body = request.body
    return body["text"]["content"] if "msgtype" in body else body["title"] + body["text"]
