"""The stream reads what the relay wrote as it is, and validates anything else it finds on the
license topic: on the real RabbitMQ, PostgreSQL and Tansu, with records a foreign producer
wrote straight to Kafka beside the relay's (streams.relayed)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
from aiokafka import AIOKafkaProducer

from infra.db import session
from infra.settings import Settings
from producers.generator import license_event
from schemas.models import IngestEvent, LicenseRecord
from tests.support import Pipeline, count_rows, metric, publish, scrape, wait_until
from tests.support.cases import case_event

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))


def _license(license_id: str, mobile: str = "13800138000"):  # type: ignore[no-untyped-def]
    return license_event(
        "license.issued",
        license_id,
        category="food_business",
        holder_mobile=mobile,
        issued_on=dt.date(2026, 6, 1),
        expires_on=dt.date(2031, 5, 31),  # years ahead: no reminder is due
        occurred_at=NOW - dt.timedelta(days=1),
    )


def _write_to_kafka(
    settings: Settings, records: list[tuple[bytes, bytes]], family: str = "licenses"
) -> None:
    """What a foreign producer with access to our Kafka could do: write to our topic."""

    async def produce() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False
        )
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(settings.topic(family), value, key=key)
        finally:
            await producer.stop()

    asyncio.run(produce())


def _stream_metric(settings: Settings, name: str, **labels: str) -> float:
    return metric(scrape(settings.stream_metrics_port), name, **labels)


def test_relayed_records_are_read_as_written_and_foreign_ones_are_validated(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given relay, stream and worker, and licenses published the normal way
    pipeline.set_env(GOVNOTIFY_NOW=NOW.isoformat())
    pipeline.relay()
    pipeline.stream()
    pipeline.worker()
    relayed_licenses = [_license(f"REL-{i}") for i in range(20)]
    publish(settings, relayed_licenses)
    wait_until(lambda: count_rows(settings, LicenseRecord) == 20, 60)
    topic = settings.topic("licenses")
    validated = "govnotify_stream_records_validated_total"

    # Then none of them was validated again: the journal vouched for each one's bytes
    assert _stream_metric(settings, validated, topic=topic) == 0

    # When a foreign producer writes straight to the license topic: a valid license the relay
    # never saw, the first license again under its id with another mobile, and garbage
    with session(settings) as s:
        first = s.get(IngestEvent, relayed_licenses[0].event_id)
        assert first is not None
        forged_body = json.loads(first.body)
    forged_body["payload"]["holder_mobile"] = "+8613912345678"
    foreign = _license("FOREIGN-1", mobile="13700137000")
    _write_to_kafka(
        settings,
        [
            (b"FOREIGN-1", foreign.to_json_bytes()),
            (b"REL-0", json.dumps(forged_body, ensure_ascii=False).encode()),
            (b"REL-1", b"{not json"),
        ],
    )

    # Then each was validated the long way: the valid foreign license is recorded (as before),
    # the forged copy is a duplicate of the applied original, the garbage is invalid
    wait_until(lambda: _stream_metric(settings, validated, topic=topic) == 3, 60)
    wait_until(lambda: count_rows(settings, LicenseRecord) == 21, 60)
    wait_until(
        lambda: (
            _stream_metric(
                settings, "govnotify_stream_events_total", event_type="unknown", outcome="invalid"
            )
            == 1
        ),
        60,
    )
    assert (
        _stream_metric(
            settings,
            "govnotify_stream_events_total",
            event_type="license.issued",
            outcome="duplicate",
        )
        == 1
    )
    with session(settings) as s:
        rel0 = s.get(LicenseRecord, "REL-0")
        foreign_row = s.get(LicenseRecord, "FOREIGN-1")
    assert rel0 is not None and rel0.holder_mobile == "+8613800138000"
    assert foreign_row is not None and foreign_row.holder_mobile == "+8613700137000"


def test_case_records_are_read_as_written_and_foreign_ones_are_validated(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given relay and stream, and a completed case published the normal way
    pipeline.set_env(GOVNOTIFY_NOW=NOW.isoformat())
    pipeline.relay()
    pipeline.stream()
    completed = case_event("case.completed", "REL-C-1", NOW - dt.timedelta(minutes=5))
    publish(settings, [completed])
    wait_until(lambda: _applied(settings, completed.event_id), 60)
    cases_topic = settings.topic("cases")
    validated = "govnotify_stream_records_validated_total"
    assert _stream_metric(settings, validated, topic=cases_topic) == 0

    # When a foreign producer writes garbage and a forged copy of that case to the case topic
    forged = json.loads(completed.to_json_bytes())
    forged["payload"]["applicant"]["mobile"] = "+8613912345678"
    _write_to_kafka(
        settings,
        [
            (b"REL-C-1", json.dumps(forged, ensure_ascii=False).encode()),
            (b"REL-C-2", b"[]"),
        ],
        family="cases",
    )

    # Then both were validated the long way: the copy is a duplicate, the garbage invalid
    wait_until(lambda: _stream_metric(settings, validated, topic=cases_topic) == 2, 60)
    wait_until(
        lambda: (
            _stream_metric(
                settings,
                "govnotify_stream_events_total",
                event_type="case.completed",
                outcome="duplicate",
            )
            == 1
        ),
        60,
    )
    assert (
        _stream_metric(
            settings, "govnotify_stream_events_total", event_type="unknown", outcome="invalid"
        )
        == 1
    )


def _applied(settings: Settings, event_id: str) -> bool:
    with session(settings) as s:
        row = s.get(IngestEvent, event_id)
        return row is not None and row.applied_at is not None
