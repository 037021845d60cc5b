"""A Kafka that comes back empty loses nothing of ours.

On the real RabbitMQ and PostgreSQL, with a Tansu of the test's own (restarted empty, as a
killed embedded broker comes back): events the relay accepted but the stream had not applied
are re-driven from the journal, exactly once in effect; the license registry is untouched
(it is in PostgreSQL); a case's stream state is rebuilt from the journal and the satisfaction
windows from the evaluations; a stream running through the reset exits to start afresh.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from infra import services
from infra.db import session
from infra.settings import Settings
from producers.generator import license_event
from producers.rabbitmq import Publisher
from schemas.events import Event, make_event
from schemas.models import (
    DeadLetter,
    EvaluationRecord,
    IngestEvent,
    KafkaEpoch,
    Notification,
    RectificationTicket,
)
from streams.context import EXIT_NEW_EPOCH
from tests.fakes.twilio_server import FakeTwilio
from tests.support import (
    Pipeline,
    count_rows,
    metric,
    pipeline_settings,
    publish,
    purge_namespace,
    run_cli,
    scrape,
    wait_until,
)
from tests.support.cases import case_event, evaluation

pytestmark = pytest.mark.integration

TODAY = dt.date(2026, 11, 26)
NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
T0 = NOW - dt.timedelta(days=3)
DEPARTMENT = "市场监督管理局"


class OwnTansu:
    """A Tansu for one test, restartable empty on the same port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = services.free_port()
        self.log = log_dir / "tansu.log"
        self.proc = services.start_tansu(self.port, self.log)

    @property
    def url(self) -> str:
        return self.proc.url

    def restart_empty(self) -> None:
        services.stop_pid(self.proc.pid)
        self.proc = services.start_tansu(self.port, self.log)

    def stop(self) -> None:
        services.stop_pid(self.proc.pid)


@pytest.fixture
def tansu_own(tmp_path: Path) -> Iterator[OwnTansu]:
    own = OwnTansu(tmp_path)
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
def reset_settings(
    namespace: str, database_url: str, tmp_path: Path, amqp_url: str, tansu_own: OwnTansu
) -> Iterator[Settings]:
    s = pipeline_settings(
        namespace=namespace,
        data_dir=tmp_path / "data",
        amqp_url=amqp_url,
        kafka_url=tansu_own.url,
        database_url=database_url,
    )
    try:
        yield s
    finally:
        purge_namespace(s)


@pytest.fixture
def reset_pipeline(reset_settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(reset_settings, tmp_path / "logs")
    try:
        yield p
    finally:
        p.stop_all()


def due(license_id: str, mobile: str) -> Event:
    """A license 20 days from expiry: its 30-day reminder is due today."""
    expires = TODAY + dt.timedelta(days=20)
    return license_event(
        "license.issued",
        license_id,
        category="food_business",
        holder_mobile=mobile,
        issued_on=expires - dt.timedelta(days=365 * 5),
        expires_on=expires,
        occurred_at=T0,
    )


def sms_per_license(fake: FakeTwilio) -> Counter[str]:
    return Counter(m["body"].split("证号")[1].split("）")[0] for m in fake.messages)


def epochs(settings: Settings) -> int:
    return count_rows(settings, KafkaEpoch)


def unapplied(settings: Settings) -> int:
    return count_rows(settings, IngestEvent, IngestEvent.applied_at.is_(None))


def day_ratings(settings: Settings) -> tuple[float, float] | None:
    """(ratings, rate) of the department's current day window, from the stream's /metrics."""
    try:
        samples = scrape(settings.stream_metrics_port)
    except OSError:
        return None
    labels = {"window": "day", "dimension": "department", "key": DEPARTMENT}
    return (
        metric(samples, "govnotify_satisfaction_ratings", **labels),
        metric(samples, "govnotify_satisfaction_rate", **labels),
    )


def test_a_kafka_that_comes_back_empty_loses_nothing_of_ours(
    reset_settings: Settings,
    reset_pipeline: Pipeline,
    tansu_own: OwnTansu,
    fake_twilio: FakeTwilio,
) -> None:
    settings, pipeline = reset_settings, reset_pipeline
    pipeline.set_env(
        GOVNOTIFY_TWILIO_ACCOUNT_SID=fake_twilio.account_sid,
        GOVNOTIFY_TWILIO_AUTH_TOKEN=fake_twilio.auth_token,
        GOVNOTIFY_TWILIO_FROM="+15017122661",
        GOVNOTIFY_TWILIO_API_BASE=fake_twilio.base_url,
        GOVNOTIFY_NOW=NOW.isoformat(),
        GOVNOTIFY_KAFKA_EPOCH_CHECK_S="1",
    )
    # Given a running pipeline that applied 30 due licenses, a completed case and its rating
    pipeline.relay()
    stream = pipeline.stream()
    pipeline.worker()
    first = [due(f"LIC-A-{i:03d}", f"1380000{i:04d}") for i in range(30)]
    case_at = NOW - dt.timedelta(hours=2)
    publish(
        settings,
        [
            *first,
            case_event("case.completed", "C-1", case_at),
            evaluation("C-1", 5, case_at + dt.timedelta(minutes=5)),
        ],
    )
    wait_until(
        lambda: (
            len(sms_per_license(fake_twilio)) == 30
            and count_rows(settings, EvaluationRecord) == 1
            and unapplied(settings) == 0
        ),
        120,
        message=lambda: f"{len(fake_twilio.messages)} SMS\n{stream.log_tail()}",
    )
    assert epochs(settings) == 1

    # … and events the relay accepted while the stream was down: in Kafka, not applied
    stream.stop()
    second = [due(f"LIC-B-{i:03d}", f"1390000{i:04d}") for i in range(20)]
    negative = evaluation("C-1", 1, case_at + dt.timedelta(minutes=10))
    publish(settings, [*second, negative])
    wait_until(
        lambda: (
            count_rows(
                settings,
                IngestEvent,
                IngestEvent.applied_at.is_(None),
                IngestEvent.relayed_at.is_not(None),
            )
            == 21
        ),
        60,
    )

    # When Kafka loses every byte (the embedded broker restarted) and the relay notices
    tansu_own.restart_empty()
    wait_until(lambda: epochs(settings) == 2, 60, message="the relay did not notice the reset")
    stream = pipeline.stream(name="stream-after-reset")

    # Then every accepted event takes effect once: the 20 reminders go out, none twice
    wait_until(
        lambda: len(sms_per_license(fake_twilio)) == 50 and unapplied(settings) == 0,
        120,
        message=lambda: f"{len(fake_twilio.messages)} SMS\n{stream.log_tail()}",
    )
    assert set(sms_per_license(fake_twilio).values()) == {1}
    relay = scrape(settings.relay_metrics_port)
    assert metric(relay, "govnotify_kafka_resets_total") == 1
    assert metric(relay, "govnotify_ingest_redriven_total") >= 21
    assert metric(relay, "govnotify_kafka_epoch") == 2
    # … the negative review, whose case the new stream had never seen, knows its service item
    # (the case state was rebuilt from the journal)
    wait_until(lambda: count_rows(settings, RectificationTicket) == 1, 60)
    with session(settings) as s:
        ticket = s.execute(select(RectificationTicket)).scalar_one()
    assert ticket.service_item == "食品经营许可证核发"
    # … and the satisfaction windows count both ratings: the old one rebuilt from PostgreSQL
    wait_until(
        lambda: day_ratings(settings) == (2.0, 0.5),
        60,
        message=lambda: f"day window: {day_ratings(settings)}\n{stream.log_tail()}",
    )

    # When Kafka is lost again while the stream runs
    tansu_own.restart_empty()

    # Then the stream, whose log is gone, exits to start afresh in the new epoch
    wait_until(lambda: not stream.alive(), 60, message=lambda: stream.log_tail())
    assert stream.popen.returncode == EXIT_NEW_EPOCH
    assert epochs(settings) == 3

    # … and restarted, it goes on: new licenses are reminded, old ones never again
    pipeline.stream(name="stream-epoch-3")
    third = [due(f"LIC-C-{i:03d}", f"1370000{i:04d}") for i in range(5)]
    publish(settings, third)
    wait_until(lambda: len(sms_per_license(fake_twilio)) == 55, 120)
    assert set(sms_per_license(fake_twilio).values()) == {1}
    with session(settings) as s:
        sent = s.execute(
            select(func.count()).select_from(Notification).where(Notification.status == "sent")
        ).scalar_one()
    assert sent == 55


def test_the_journal_turns_an_upstream_repeat_into_nothing_and_a_reused_id_into_a_dead_letter(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given a relay, and one event
    pipeline.relay()
    event = due("LIC-R-1", "13600000001")
    # another event under the same id
    reused = make_event(
        "license.issued",
        due("LIC-R-2", "13600000002").payload.model_dump(mode="json"),
        source="license-registry",
        occurred_at=T0,
        event_id=event.event_id,
    )

    # When the upstream publishes it twice, then reuses its id for another event
    with Publisher.from_settings(settings) as p:
        p.publish(event)
        p.publish(event)
        p.publish_raw(reused.to_json_bytes(), reused.event_type)

    # Then the journal holds it once, relayed once; the repeat is counted, the reuse refused
    wait_until(lambda: count_rows(settings, DeadLetter) == 1, 30)
    with session(settings) as s:
        rows = s.execute(select(IngestEvent)).scalars().all()
        letter = s.execute(select(DeadLetter)).scalar_one()
    assert [(r.event_id, r.entity_key) for r in rows] == [(event.event_id, "LIC-R-1")]
    assert rows[0].relayed_at is not None and rows[0].epoch == 1
    assert (letter.stage, letter.reason, letter.event_id) == (
        "ingest",
        "duplicate_event_id",
        event.event_id,
    )
    samples = scrape(settings.relay_metrics_port)
    assert metric(samples, "govnotify_events_duplicate_total") == 1
    assert metric(samples, "govnotify_events_relayed_total") == 1


def test_the_operator_re_drives_events_the_stream_has_not_applied_and_each_takes_effect_once(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given 12 due licenses the relay accepted while no stream ran (relayed, not applied)
    pipeline.set_env(
        GOVNOTIFY_TWILIO_ACCOUNT_SID=fake_twilio.account_sid,
        GOVNOTIFY_TWILIO_AUTH_TOKEN=fake_twilio.auth_token,
        GOVNOTIFY_TWILIO_FROM="+15017122661",
        GOVNOTIFY_TWILIO_API_BASE=fake_twilio.base_url,
        GOVNOTIFY_NOW=NOW.isoformat(),
    )
    pipeline.relay()
    publish(settings, [due(f"LIC-J-{i:03d}", f"1360000{i:04d}") for i in range(12)])
    wait_until(
        lambda: count_rows(settings, IngestEvent, IngestEvent.relayed_at.is_not(None)) == 12, 60
    )

    # When the operator counts, then re-drives them (GovnotifyEventsNotApplied's runbook)
    dry = run_cli("journal", "redrive", "--older-than-minutes", "0", "--dry-run", env=pipeline.env)
    real = run_cli("journal", "redrive", "--older-than-minutes", "0", env=pipeline.env)
    again = run_cli("journal", "redrive", "--older-than-minutes", "30", env=pipeline.env)
    # … and the stream runs: it meets each event twice in Kafka
    pipeline.stream()
    pipeline.worker()

    # Then each license is texted once, every event applied, the copies skipped
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("12 events relayed over 0 min ago and not applied: would be")
    assert real.stdout.startswith("12 events relayed over 0 min ago and not applied: re-driven")
    assert again.stdout.startswith("0 events")
    wait_until(lambda: len(sms_per_license(fake_twilio)) == 12 and unapplied(settings) == 0, 120)
    assert set(sms_per_license(fake_twilio).values()) == {1}
    # (every copy after the first is skipped: found applied in the journal, or met twice in
    # one batch)
    samples = scrape(settings.stream_metrics_port)
    assert metric(samples, "govnotify_stream_events_total", outcome="applied") == 12
    assert metric(samples, "govnotify_stream_events_total", outcome="duplicate") == 12
    with session(settings) as s:
        redriven = s.execute(select(func.sum(IngestEvent.redriven))).scalar_one()
    assert redriven == 12
