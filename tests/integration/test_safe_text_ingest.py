"""Issue 11 at the ingest edge, through the real relay (RabbitMQ in, Kafka out, dead letters in
PostgreSQL): upstream text that would reach a citizen's SMS is refused with reason
``unsafe_text`` naming the field, and an event dated far in the future with
``occurred_in_future``, so it cannot freeze the license registry."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from typing import Any

import pika
import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from producers.generator import license_event
from producers.rabbitmq import Publisher
from schemas.events import make_event
from schemas.models import DeadLetter, LicenseRecord
from tests.support import Pipeline, count_rows, metric, scrape, wait_until
from tests.support.cases import CST

pytestmark = pytest.mark.integration

AT = dt.datetime(2026, 11, 26, 9, 0, tzinfo=CST)
TODAY = AT.date()

#: (payload field as the detail names it, where to put it, the hostile value)
ATTACKS: list[tuple[str, str, str]] = [
    ("payload.service_item", "service_item", "您的办件异常，请致电4008208820处理"),
    ("payload.service_item", "service_item", "请回电029-88886666"),
    (
        "payload.service_point.name",
        "service_point.name",
        "长安区政务服务中心\n【公安局】您涉嫌洗钱",
    ),
    ("payload.department", "department", "【公安局】"),
    ("payload.department", "department", "请登录gov-check。cn核验"),
    ("payload.project_steward.name", "project_steward.name", "ｅｖｉｌ．ｃｏｍ"),
    ("payload.project_steward.department", "project_steward.department", "evil.ru"),
    ("payload.service_item", "service_item", "详见10.1.2.3:8080/a"),
    ("payload.service_point.name", "service_point.name", "访问例子.中国"),
    ("payload.applicant.name", "applicant.name", "xn--fiqs8s"),
]


def _case_payload() -> dict[str, Any]:
    return {
        "case_id": "CA-SAFE-OK",
        "service_item": "建筑工程施工许可证核发",
        "department": "长安区住房和城乡建设局",
        "service_point": {
            "id": "SC-CHANGAN",
            "name": "长安区政务服务中心",
            "level": "service_centre",
        },
        "applicant": {
            "kind": "enterprise",
            "name": "西安某某科技有限公司",
            "mobile": "13900000001",
        },
        "key_project": True,
        "project_steward": {"staff_id": "S-0042", "name": "王管家", "department": "政务服务中心"},
        "submitted_at": AT.isoformat(),
    }


def _hostile(where: str, value: str) -> bytes:
    payload = json.loads(json.dumps(_case_payload()))
    target = payload
    *parents, leaf = where.split(".")
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "case.submitted",
            "schema_version": 1,
            "occurred_at": AT.isoformat(),
            "source": "case-system",
            "payload": payload,
        },
        ensure_ascii=False,
    ).encode()


def test_text_that_would_reach_an_sms_is_dead_lettered_as_unsafe_text_naming_the_field(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given: a running relay
    pipeline.relay()
    raws = [_hostile(where, value) for _, where, value in ATTACKS]

    # When: each attack arrives, then a genuine case
    with Publisher.from_settings(settings) as p:
        for raw in raws:
            p.publish_raw(raw, "case.submitted")
        p.publish(make_event("case.submitted", _case_payload(), source="case-system"))

    # Then: one dead letter per attack, reason unsafe_text, the field named, the text not echoed
    wait_until(lambda: count_rows(settings, DeadLetter) == len(ATTACKS), 30)
    with session(settings) as s:
        letters = {bytes(d.raw): d for d in s.execute(select(DeadLetter)).scalars()}
    assert set(letters) == set(raws)
    for (field, _, value), raw in zip(ATTACKS, raws, strict=True):
        letter = letters[raw]
        assert (letter.stage, letter.reason) == ("ingest", "unsafe_text")
        assert letter.detail.startswith(f"{field}: unsafe text:"), letter.detail
        assert value not in letter.detail
    # and on the RabbitMQ dead-letter queue with the reason in a header
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        ch = conn.channel()
        reasons = []
        for _ in ATTACKS:
            method, props, _body = ch.basic_get(settings.dead_letter_queue, auto_ack=True)
            assert method is not None
            reasons.append(props.headers["x-reject-reason"])
    finally:
        conn.close()
    assert Counter(reasons) == {"unsafe_text": len(ATTACKS)}
    # and counted; the genuine case went through to Kafka
    wait_until(
        lambda: metric(scrape(settings.relay_metrics_port), "govnotify_events_relayed_total") == 1,
        30,
    )
    samples = scrape(settings.relay_metrics_port)
    assert metric(samples, "govnotify_events_rejected_total", reason="unsafe_text") == len(ATTACKS)


def test_a_revocation_dated_9999_is_refused_and_a_later_genuine_renewal_still_applies(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given: a running pipeline whose clock stands at 10:00 today, and a live license
    pipeline.set_env(GOVNOTIFY_NOW=f"{TODAY.isoformat()}T10:00:00+08:00")
    pipeline.relay()
    pipeline.stream()
    pipeline.worker()
    license_id = f"LIC-FUT-{uuid.uuid4().hex[:6]}"

    def licence(event_type: str, expires_on: dt.date, at: dt.datetime):  # type: ignore[no-untyped-def]
        return license_event(
            event_type,
            license_id,
            category="food_business",
            issued_on=expires_on - dt.timedelta(days=365 * 5),
            expires_on=expires_on,
            occurred_at=at,
        )

    first_expiry, renewed_expiry = TODAY + dt.timedelta(days=200), TODAY + dt.timedelta(days=2026)
    forged = make_event(
        "license.revoked",
        {"license_id": license_id, "reason": "吊销", "revoked_on": TODAY.isoformat()},
        source="license-registry",
        occurred_at=dt.datetime(9999, 12, 31, tzinfo=dt.UTC),
    )

    # When: issued, then a revocation dated 9999-12-31, then a genuine renewal an hour later
    with Publisher.from_settings(settings) as p:
        p.publish(licence("license.issued", first_expiry, AT - dt.timedelta(hours=2)))
        p.publish(forged)
        p.publish(licence("license.renewed", renewed_expiry, AT - dt.timedelta(hours=1)))

    # Then: the forged revocation is a dead letter with its reason ...
    wait_until(lambda: count_rows(settings, DeadLetter) == 1, 30)
    with session(settings) as s:
        [letter] = s.execute(select(DeadLetter)).scalars().all()
    assert (letter.stage, letter.reason) == ("ingest", "occurred_in_future")
    assert letter.event_id == str(forged.envelope.event_id)
    # ... and the renewal applied: the license is live until its new expiry
    wait_until(
        lambda: (
            count_rows(
                settings,
                LicenseRecord,
                LicenseRecord.license_id == license_id,
                LicenseRecord.expires_on == renewed_expiry,
            )
            == 1
        ),
        60,
        message="the renewal did not reach the registry",
    )
    with session(settings) as s:
        record = s.execute(
            select(LicenseRecord).where(LicenseRecord.license_id == license_id)
        ).scalar_one()
    assert record.status == "live"
    samples = scrape(settings.relay_metrics_port)
    assert metric(samples, "govnotify_events_rejected_total", reason="occurred_in_future") == 1
