"""``GET /trace/<id>`` through the real api process on a real PostgreSQL.

Two upstream systems published events (journaled as the relay leaves them) whose rows keep the
event's id; a third source is the 12345 hotline, registered ``--trace-any``. A source sees what
its own events caused and nothing of the other's (the same 404 as for an unknown id); the
hotline traces a mobile number, masked, and that trace is audited without the number.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from infra.sources import create_source
from schemas.models import IngestEvent, Notification, NotificationStatusEvent, OperatorAudit
from tests.integration.api.conftest import Answer, request

pytestmark = pytest.mark.integration

MOBILE = "+8613800138000"
MASKED = "+86138****8000"


@dataclass(frozen=True)
class Sources:
    permits: str
    cases: str
    hotline: str
    permit_event: str
    case_event: str
    license_id: str


def _journal(event_id: str, source: str, event_type: str, family: str, key: str) -> IngestEvent:
    body = {"event_id": event_id, "event_type": event_type, "source": source, "payload": {}}
    now = dt.datetime.now(dt.UTC)
    return IngestEvent(
        event_id=event_id,
        event_type=event_type,
        family=family,
        entity_key=key,
        occurred_at=now,
        body=json.dumps(body).encode(),
        fingerprint="0" * 64,
        relayed_at=now,
        applied_at=now,
    )


@pytest.fixture
def sources(api: Settings) -> Sources:
    """Three HTTP sources, and an event of each of the first two with a notification it caused."""
    tokens = {}
    for name, types, trace_any in (
        ("permit-portal", ["license.issued"], False),
        ("case-portal", ["case.completed"], False),
        ("hotline-12345", ["case.submitted"], True),
    ):
        made = create_source(
            api, name, types, amqp_user=None, http_token=True, operator="t", trace_any=trace_any
        )
        assert made.http_token is not None
        tokens[name] = made.http_token
    u = uuid.uuid4().hex[:8]
    permit_event, case_event, lic = str(uuid.uuid4()), str(uuid.uuid4()), f"LIC-{u}"
    with session(api) as s:
        s.add(_journal(permit_event, "permit-portal", "license.issued", "licenses", lic))
        s.add(_journal(case_event, "case-portal", "case.completed", "cases", f"C-{u}"))
        for event_id, source, subject in (
            (permit_event, "permit-portal", lic),
            (case_event, "case-portal", f"C-{u}"),
        ):
            note = Notification(
                idempotency_key=f"test:{uuid.uuid4().hex}",
                flow="renewal" if subject == lic else "survey",
                channel="sms",
                subject_id=subject,
                recipient=MOBILE,
                body="【长安政务】测试",
                status="delivered",
                provider="twilio",
                provider_ref=f"SM{uuid.uuid4().hex}",
                event_id=event_id,
                event_source=source,
            )
            s.add(note)
            s.add(
                NotificationStatusEvent(
                    dedupe_key=f"twilio:{note.provider_ref}:delivered",
                    notification_id=note.id,
                    provider="twilio",
                    provider_ref=note.provider_ref or "",
                    provider_status="delivered",
                    status="delivered",
                    applied=True,
                )
            )
        s.commit()
    return Sources(
        tokens["permit-portal"],
        tokens["case-portal"],
        tokens["hotline-12345"],
        permit_event,
        case_event,
        lic,
    )


def trace(settings: Settings, ident: str, token: str | None) -> Answer:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return request(settings, f"/trace/{ident}", headers=headers, method="GET")


def test_a_source_traces_its_own_event(api: Settings, sources: Sources) -> None:
    # Given an event the permit portal published, which caused a delivered reminder
    # When the portal traces it
    answer = trace(api, sources.permit_event, sources.permits)

    # Then it sees the event and exactly what it caused, each with its time, number masked
    assert answer.status == 200, answer.body
    doc = answer.json()
    assert doc["event"] is True and "steps" not in doc
    kinds = [step["kind"] for step in doc["caused"]]
    assert sorted(kinds) == ["event", "notification", "provider-status"]
    note = next(step for step in doc["caused"] if step["kind"] == "notification")
    assert note["status"] == "delivered" and note["mobile"] == MASKED
    assert note["fields"]["event_id"] == sources.permit_event
    assert all(step["at"] for step in doc["caused"])
    assert b"13800138000" not in answer.body


def test_another_sources_event_and_an_unknown_id_get_the_same_404(
    api: Settings, sources: Sources
) -> None:
    # Given the case portal's event, a license id and an id nobody knows
    # When the permit portal traces each
    theirs = trace(api, sources.case_event, sources.permits)
    entity = trace(api, sources.license_id, sources.permits)
    unknown = trace(api, str(uuid.uuid4()), sources.permits)

    # Then each is the same 404: nothing tells another source's id from a made-up one
    assert (theirs.status, entity.status, unknown.status) == (404, 404, 404)
    assert theirs.body == entity.body == unknown.body == b'{"error": "not_found"}'


@pytest.mark.parametrize("token", [None, "gn1.0123456789abcdef." + "A" * 43, "not a token"])
def test_no_valid_token_is_401(api: Settings, sources: Sources, token: str | None) -> None:
    # Given no token, a well-formed unknown one, and garbage
    # When the event is traced with it
    answer = trace(api, sources.permit_event, token)

    # Then 401, whatever the id
    assert answer.status == 401


@pytest.mark.parametrize("ident", ["a" * 65, "bad%0Aid", "%2E%2E%2Fetc", "x%20y", "%2525"])
def test_a_malformed_id_is_400(api: Settings, sources: Sources, ident: str) -> None:
    # Given an id no event, license, case or mobile can be
    # When it is traced
    answer = trace(api, ident, sources.hotline)

    # Then 400 before anything is looked up
    assert answer.status == 400
    assert answer.json() == {"error": "malformed"}


def test_the_hotline_traces_a_mobile_masked_and_it_is_audited(
    api: Settings, sources: Sources
) -> None:
    # Given the hotline's token (trace any id)
    # When it traces the citizen's mobile number
    answer = trace(api, "13800138000", sources.hotline)

    # Then it sees both sources' messages to the number, masked, and the lookup is recorded:
    # who asked, not the number
    assert answer.status == 200, answer.body
    doc = answer.json()
    assert doc["query"] == "138****8000" and doc["event"] is False
    notes = [step for step in doc["steps"] if step["kind"] == "notification"]
    assert len(notes) == 2 and {n["mobile"] for n in notes} == {MASKED}
    assert b"13800138000" not in answer.body
    with session(api) as s:
        rows = s.execute(select(OperatorAudit)).scalars().all()
    traced = [r for r in rows if r.action == "trace.api-mobile"]
    assert [(r.operator, r.subject) for r in traced] == [("source:hotline-12345", "mobile")]
    assert "13800138000" not in traced[0].detail


def test_a_post_to_trace_is_405(api: Settings, sources: Sources) -> None:
    # Given the trace route
    # When it is POSTed to
    answer = request(api, f"/trace/{sources.permit_event}", b"{}")

    # Then only GET is allowed
    assert answer.status == 405
