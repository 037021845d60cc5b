"""The SRE's view on the real services: health endpoints of every process, relay and consumer
lag, the database gauges, RabbitMQ's own metrics, and no personal data in any label."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from infra.amqp import amqp_user
from infra.clock import Clock
from infra.db import session
from infra.dbgauges import DatabaseGauges
from infra.metrics import parse_samples, serve_metrics
from infra.services import create_topics, enable_rabbitmq_prometheus, free_port, services_status
from infra.settings import Settings, load_settings
from producers.generator import bad_events, license_event
from producers.rabbitmq import Publisher, declare_topology
from producers.relay import Relay
from schemas.events import make_event
from schemas.models import (
    CallbackTask,
    DeadLetter,
    Notification,
    RectificationTicket,
    StaffAlert,
    utcnow,
)
from streams.lag import ConsumerLagMonitor
from tests.fakes.webhook_server import FakeWebhook
from tests.support import Pipeline, metric, publish, scrape, wait_until

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
TODAY = dt.date(2026, 11, 26)


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=15) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def ready(port: int) -> tuple[int, dict]:
    status, body = get(port, "/readyz")
    return status, json.loads(body)


def ports(settings: Settings) -> dict[str, int]:
    return {
        "relay": settings.relay_metrics_port,
        "stream": settings.stream_metrics_port,
        "worker": settings.worker_metrics_port,
        "scheduler": settings.scheduler_metrics_port,
    }


def issued(license_id: str, days_left: int, mobile: str, at: dt.datetime):  # type: ignore[no-untyped-def]
    expires = TODAY + dt.timedelta(days=days_left)
    return license_event(
        "license.issued",
        license_id,
        category="food_business",
        holder_mobile=mobile,
        issued_on=expires - dt.timedelta(days=365 * 5),
        expires_on=expires,
        occurred_at=at,
    )


@pytest.fixture
def staff_directory(tmp_path: Path) -> Iterator[Path]:
    """The bundled staff directory with every robot pointed at a loopback fake."""
    with FakeWebhook() as fake:
        yield fake.staff_directory(tmp_path / "staff.json")


# ---- /healthz and /readyz on every process --------------------------------------------------
def test_every_process_is_alive_and_ready_with_the_checks_it_needs(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given the whole pipeline on the real services
    pipeline.set_env(GOVNOTIFY_NOW=f"{TODAY.isoformat()}T10:00:00+08:00")
    pipeline.all()

    # When each process is probed (the stream is ready once its partitions are assigned)
    wait_until(
        lambda: all(ready(port)[0] == 200 for port in ports(settings).values()),
        60,
        message="not every process became ready: "
        + str({name: ready(port) for name, port in ports(settings).items()}),
    )

    # Then each is alive, and ready with exactly the dependencies it uses, each "ok"
    expected = {
        "relay": {"rabbitmq", "kafka", "database"},
        "stream": {"rabbitmq", "kafka", "stream"},
        "worker": {"rabbitmq", "database"},
        "scheduler": {"rabbitmq", "database"},
    }
    for name, port in ports(settings).items():
        assert get(port, "/healthz") == (200, "ok\n"), name
        status, answer = ready(port)
        assert status == 200 and answer["status"] == "ready", (name, answer)
        assert set(answer["checks"]) == expected[name], name
        assert set(answer["checks"].values()) == {"ok"}, name
        # and /metrics is still there
        assert "# TYPE" in get(port, "/metrics")[1], name
    # … and the probes' RabbitMQ connections fill no component's log (pika logs a dozen INFO
    # lines per connection)
    for log in sorted(pipeline.log_dir.glob("*.log")):
        assert "Pika version" not in log.read_text(errors="replace"), log.name


def test_a_process_whose_broker_is_down_is_alive_but_not_ready(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a scheduler whose RabbitMQ URL points at a port nothing listens on (it starts:
    # it only needs RabbitMQ when a job is due)
    closed = free_port()
    broken = settings.model_copy(update={"amqp_url": f"amqp://guest:guest@127.0.0.1:{closed}/"})
    group = Pipeline(broken, tmp_path / "broken-logs")
    try:
        child = group.scheduler()

        # When probed
        status, answer = ready(broken.scheduler_metrics_port)

        # Then it is alive but says it is not ready, and why; the database is fine
        assert get(broken.scheduler_metrics_port, "/healthz") == (200, "ok\n")
        assert status == 503 and answer["status"] == "not ready"
        assert answer["checks"]["database"] == "ok"
        assert f"127.0.0.1:{closed}" in answer["checks"]["rabbitmq"]
        assert child.alive()
    finally:
        group.stop_all()


# ---- relay lag and queue depth --------------------------------------------------------------
def test_relay_lag_is_the_age_of_the_oldest_event_of_the_batch(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given a running relay
    pipeline.relay()
    event = issued("LIC-LAG-1", 20, "13800000011", dt.datetime(2026, 11, 20, 9, tzinfo=dt.UTC))

    # When an event published 40 s ago (by its timestamp) arrives, among fresh ones
    published = time.time() - 40
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        # As an upstream publisher does: the relay may not have declared it yet.
        declare_topology(
            channel, settings.exchange, settings.relay_queue, settings.dead_letter_queue
        )
        channel.confirm_delivery()
        channel.basic_publish(
            settings.exchange,
            event.event_type,
            event.to_json_bytes(),
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                # the publisher's RabbitMQ user, which the relay checks against the sources
                user_id=amqp_user(settings.amqp_url),
                timestamp=int(published),
                headers={"timestamp_in_ms": int(published * 1000)},
            ),
        )
    finally:
        connection.close()
    wait_until(
        lambda: metric(scrape(settings.relay_metrics_port), "govnotify_events_relayed_total") == 1,
        30,
    )

    # Then the relay lag says about 40 s (publish time to Kafka's ack)
    lag = metric(scrape(settings.relay_metrics_port), "govnotify_relay_lag_seconds")
    assert 40 <= lag < 70


def test_relay_queue_depth_counts_the_events_waiting(settings: Settings) -> None:
    # Given 7 events waiting in the ingest queue and nobody consuming
    with Publisher.from_settings(settings) as p:
        for i in range(7):
            p.publish(issued(f"LIC-DEPTH-{i}", 20, "13800000012", dt.datetime.now(dt.UTC)))
    relay = Relay(settings, sink=_NoKafka())  # type: ignore[arg-type]
    relay.depth_interval_s = 0.2
    port = free_port()
    server, _ = serve_metrics(port, "127.0.0.1", registry=REGISTRY)
    stop, done = threading.Event(), threading.Event()
    watcher = threading.Thread(target=relay._watch_depth, args=(stop, done), daemon=True)
    try:
        # When the relay's depth watcher runs (its own connection, off the consuming loop)
        watcher.start()

        # Then the gauge says 7, over HTTP
        wait_until(lambda: metric(scrape(port), "govnotify_relay_queue_messages") == 7, 15)
    finally:
        done.set()
        watcher.join(10)
        server.shutdown()
        server.server_close()


class _NoKafka:
    """A sink for a relay that only watches its queue here."""

    def close(self) -> None:
        pass


# ---- Kafka consumer lag -----------------------------------------------------------------------
def test_consumer_lag_is_end_minus_committed_per_partition(settings: Settings) -> None:
    # Given a topic of 3 partitions with 5, 3 and 0 records (one record per batch, where even
    # Tansu's end offset is exact), and a group that committed 2 on partition 0 only
    topic = f"{settings.namespace}.lagtest"
    group = f"{settings.namespace}-laggroup"
    create_topics(settings.kafka_bootstrap, [topic], 3)

    async def prepare() -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False
        )
        await producer.start()
        try:
            for partition, count in ((0, 5), (1, 3)):
                for i in range(count):
                    await producer.send_and_wait(topic, b"x%d" % i, partition=partition)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.commit({TopicPartition(topic, 0): 2})
        finally:
            await consumer.stop()

    async def measure() -> dict[tuple[str, int], int]:
        monitor = ConsumerLagMonitor(settings.kafka_bootstrap, group, [topic, "absent.topic"])
        try:
            return await monitor.measure()
        finally:
            await monitor.close()

    asyncio.run(prepare())

    # When the lag is measured
    lags = asyncio.run(measure())

    # Then: 5 - 2 committed; 3 never committed (from the beginning); an empty partition 0;
    # and a topic that does not exist is neither reported nor created
    assert lags == {(topic, 0): 3, (topic, 1): 3, (topic, 2): 0}


def test_stream_reports_its_lag_per_topic_and_partition(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given relay and stream, and license events spread over the partitions
    pipeline.relay()
    pipeline.stream()
    at = dt.datetime(2026, 11, 20, 9, tzinfo=dt.UTC)
    publish(settings, [issued(f"LIC-KL-{i}", 60, "13800000013", at) for i in range(12)])

    # When the stream has processed them
    def processed() -> float:
        try:
            return metric(scrape(settings.stream_metrics_port), "govnotify_stream_events_total")
        except OSError:
            return 0.0

    wait_until(lambda: processed() >= 12, 90, message="the stream did not process the events")

    # Then the lag gauge has a series per partition of every topic the stream reads, and
    # reaches 0 everywhere once the offsets are committed; on Tansu it says not to trust it
    def lag_series() -> dict[tuple[str, str], float]:
        _status, text = get(settings.stream_metrics_port, "/metrics")
        series = parse_samples(text).get("govnotify_kafka_consumer_lag_messages", {})
        return {(dict(k)["topic"], dict(k)["partition"]): v for k, v in series.items()}

    expected = {
        (t, str(p)) for t in settings.stream_topics for p in range(settings.kafka_partitions)
    }
    wait_until(
        lambda: set(lag_series()) == expected and not any(lag_series().values()),
        30,
        message=f"lag series: {lag_series()}",
    )
    samples = scrape(settings.stream_metrics_port)
    assert metric(samples, "govnotify_kafka_consumer_lag_trustworthy") == 0


# ---- database gauges ------------------------------------------------------------------------
def test_database_gauges_count_what_is_waiting_now(settings: Settings) -> None:
    # Given known rows on PostgreSQL, at a clock pinned to now
    now = utcnow()
    clock = Clock(settings.tz, start=now)

    def ago(seconds: float) -> dt.datetime:
        return now - dt.timedelta(seconds=seconds)

    def note(key: str, status: str, **extra: object) -> Notification:
        return Notification(
            idempotency_key=key,
            flow="renewal",
            channel="sms",
            subject_id=key,
            status=status,
            **extra,  # type: ignore[arg-type]
        )

    def ticket(key: str, department: str, deadline: dt.datetime, **extra: object):  # type: ignore[no-untyped-def]
        return RectificationTicket(
            idempotency_key=key,
            evaluation_id=key,
            case_id=key,
            department=department,
            service_item="食品经营许可证核发",
            service_point_id="SC-CHANGAN",
            rating=1,
            opened_at=ago(86400),
            deadline_at=deadline,
            **extra,  # type: ignore[arg-type]
        )

    def alert(key: str, point: str, event_at: dt.datetime, **extra: object) -> StaffAlert:
        return StaffAlert(
            idempotency_key=key,
            case_id=key,
            service_point_id=point,
            special_groups="elderly",
            event_at=event_at,
            **extra,  # type: ignore[arg-type]
        )

    def task(key: str, department: str, due: dt.datetime, status: str = "open") -> CallbackTask:
        return CallbackTask(
            idempotency_key=key,
            case_id=key,
            kind="key_project",
            owner_staff_id="STW-01",
            owner_name="刘管家",
            department=department,
            service_item="x",
            status=status,
            due_at=due,
        )

    def letter(stage: str, status: str = "open") -> DeadLetter:
        return DeadLetter(
            fingerprint=uuid.uuid4().hex,
            stage=stage,
            reason="schema_violation",
            detail="x",
            raw=b"{}",
            status=status,
        )

    with session(settings) as s:
        s.add_all(
            [
                note("n-created-old", "created", created_at=ago(300)),
                note("n-created-new", "created"),
                note(
                    "n-deferred",
                    "created",
                    created_at=ago(900),
                    not_before=now + dt.timedelta(hours=8),
                ),
                note("n-sending", "sending", updated_at=ago(120)),
                note("n-sent", "sent", sent_at=ago(60), updated_at=ago(60)),
                note("n-delivered", "delivered"),
                ticket("t-open", "市场监督管理局", now + dt.timedelta(days=3)),
                ticket("t-late", "市场监督管理局", ago(3600)),
                ticket("t-flagged", "税务局", now + dt.timedelta(days=1), overdue_at=ago(10)),
                ticket("t-closed", "税务局", ago(3600), status="closed"),
                alert("a-wait-1", "SC-CHANGAN", ago(700), status="escalated"),
                alert("a-wait-2", "SC-CHANGAN", ago(30), status="sent"),
                alert("a-acked", "ST-01", ago(100), acknowledged_at=ago(50)),
                alert("a-last-week", "ST-01", ago(7 * 86400)),
                task("c-late", "市场监督管理局", ago(60)),
                task("c-later", "市场监督管理局", now + dt.timedelta(hours=2)),
                task("c-done", "税务局", ago(60), status="done"),
                letter("ingest"),
                letter("ingest"),
                letter("delivery"),
                letter("ingest", status="replayed"),
            ]
        )
        s.commit()
    registry = CollectorRegistry()
    registry.register(DatabaseGauges(settings, clock=clock, cache_s=0))
    port = free_port()
    server, _ = serve_metrics(port, "127.0.0.1", registry=registry)
    try:
        # When Prometheus scrapes
        samples = scrape(port)
    finally:
        server.shutdown()
        server.server_close()

    # Then each gauge says what waits, with bounded labels
    def g(name: str, **labels: str) -> float:
        return metric(samples, name, **labels)

    assert g("govnotify_database_gauges_up") == 1
    assert g("govnotify_notifications_pending", status="created") == 3
    assert g("govnotify_notifications_pending", status="sending") == 1
    assert g("govnotify_notifications_pending", status="sent") == 1
    # the deferred row waits on purpose: the oldest created one is 300 s old, not 900
    assert 300 <= g("govnotify_notifications_oldest_pending_seconds", status="created") < 330
    assert 120 <= g("govnotify_notifications_oldest_pending_seconds", status="sending") < 150
    assert 60 <= g("govnotify_notifications_oldest_pending_seconds", status="sent") < 90
    assert g("govnotify_rectification_tickets_open", department="市场监督管理局") == 2
    assert g("govnotify_rectification_tickets_open", department="税务局") == 1
    assert g("govnotify_rectification_tickets_overdue", department="市场监督管理局") == 1
    assert g("govnotify_rectification_tickets_overdue", department="税务局") == 1
    assert g("govnotify_green_channel_alerts_unacknowledged", service_point="SC-CHANGAN") == 2
    assert g("govnotify_green_channel_alerts_unacknowledged", service_point="ST-01") == 0
    assert 700 <= g("govnotify_green_channel_oldest_unacknowledged_seconds") < 730
    assert g("govnotify_callback_tasks_overdue", department="市场监督管理局") == 1
    assert g("govnotify_callback_tasks_overdue") == 1
    assert g("govnotify_dead_letters_open", stage="ingest") == 2
    assert g("govnotify_dead_letters_open", stage="delivery") == 1


def test_database_gauges_say_when_the_database_is_down(tmp_path: Path) -> None:
    # Given gauges on a PostgreSQL port nothing listens on
    down = load_settings(
        data_dir=tmp_path,
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing",
    )
    registry = CollectorRegistry()
    registry.register(DatabaseGauges(down, cache_s=0))
    port = free_port()
    server, _ = serve_metrics(port, "127.0.0.1", registry=registry)
    try:
        # When scraped
        status, text = get(port, "/metrics")
    finally:
        server.shutdown()
        server.server_close()

    # Then the scrape still answers, and says the gauges are not read
    assert status == 200
    assert "govnotify_database_gauges_up 0.0" in text


# ---- RabbitMQ's own metrics -----------------------------------------------------------------
def test_rabbitmq_metrics_are_enabled_and_answer_per_queue(settings: Settings) -> None:
    # Given the plugin enabled the way `services up` does (idempotent)
    outcome = enable_rabbitmq_prometheus(settings)
    assert outcome.startswith(("up", "enabled (")), outcome
    # and 3 events waiting in this test's relay queue
    with Publisher.from_settings(settings) as p:
        for i in range(3):
            p.publish(issued(f"LIC-RMQ-{i}", 20, "13800000014", dt.datetime.now(dt.UTC)))
    port = settings.rabbitmq_prometheus_port
    queue = settings.relay_queue

    # When RabbitMQ's endpoints are scraped
    status, aggregated = get(port, "/metrics")

    # Then the aggregated endpoint has the family without a queue label, and the detailed one
    # has it per queue (RabbitMQ 3.10: /metrics/detailed?family=queue_coarse_metrics)
    assert status == 200
    assert re.search(r"^rabbitmq_queue_messages_ready \d", aggregated, re.M)
    series = f'rabbitmq_detailed_queue_messages_ready{{vhost="/",queue="{queue}"}} 3'

    def detailed() -> str:
        return get(port, "/metrics/detailed?family=queue_coarse_metrics&vhost=/")[1]

    # (RabbitMQ refreshes its queue statistics every 5 s)
    wait_until(lambda: series in detailed(), 30, message=f"no {series}")
    per_object = f'rabbitmq_queue_messages_ready{{vhost="/",queue="{queue}"}} 3'
    wait_until(lambda: per_object in get(port, "/metrics/per-object")[1], 30)
    # and `services status` says the endpoint answers
    assert services_status(settings)["rabbitmq_prometheus"] == f"up (127.0.0.1:{port})"


# ---- no personal data in any label ----------------------------------------------------------
def test_no_label_value_anywhere_is_a_phone_number_or_an_id(
    settings: Settings, pipeline: Pipeline, staff_directory: Path
) -> None:
    # Given a pipeline run with license, case, evaluation and bad events carrying mobiles and ids
    start = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    pipeline.set_env(
        GOVNOTIFY_NOW=start.isoformat(),
        GOVNOTIFY_STAFF_DIRECTORY=str(staff_directory),
        GOVNOTIFY_SURVEY_DELAY_S="1",
    )
    pipeline.all()
    now = pipeline.now(start)
    mobiles = ["13800000021", "13900000022", "13700000023"]
    point = {"id": "SC-CHANGAN", "name": "长安区政务服务中心", "level": "service_centre"}
    case = {
        "service_item": "食品经营许可证核发",
        "department": "市场监督管理局",
        "service_point": point,
        "key_project": False,
    }
    events = [
        issued("LIC-PII-1", 20, mobiles[0], now),
        make_event(
            "case.submitted",
            {
                **case,
                "case_id": "CASE-PII-1",
                "applicant": {
                    "kind": "citizen",
                    "name": "王秀英",
                    "mobile": mobiles[1],
                    "age": 80,
                    "special_groups": ["elderly"],
                },
                "submitted_at": now.isoformat(),
            },
            source="case-system",
            occurred_at=now,
        ),
        make_event(
            "case.completed",
            {
                **case,
                "case_id": "CASE-PII-2",
                "applicant": {
                    "kind": "citizen",
                    "name": "李强",
                    "mobile": mobiles[2],
                    "age": 40,
                    "special_groups": [],
                },
                "submitted_at": (now - dt.timedelta(hours=1)).isoformat(),
                "completed_at": now.isoformat(),
            },
            source="case-system",
            occurred_at=now,
        ),
        make_event(
            "evaluation.submitted",
            {
                "evaluation_id": "EV-PII-3",
                "case_id": "CASE-PII-3",
                "rating": 1,
                "real_name": True,
                "citizen_mobile": mobiles[2],
                "comment": "等待时间太长",
                "department": "市场监督管理局",
                "service_point_id": "SC-CHANGAN",
                "evaluated_at": now.isoformat(),
            },
            source="evaluation-system",
            occurred_at=now,
        ),
    ]
    publish(settings, events)
    with Publisher.from_settings(settings) as p:
        for _reason, raw in bad_events(TODAY):
            p.publish_raw(raw, "license.issued")

    # When every component has counted its work
    def counted() -> bool:
        try:
            relay = scrape(settings.relay_metrics_port)
            stream = scrape(settings.stream_metrics_port)
            worker = scrape(settings.worker_metrics_port)
        except OSError:
            return False
        return (
            metric(relay, "govnotify_events_rejected_total") == len(bad_events(TODAY))
            and metric(stream, "govnotify_stream_events_total") >= len(events)
            and metric(worker, "govnotify_notifications_total") >= 2
        )

    wait_until(counted, 90, message="the pipeline did not count its work")

    # Then no label value of any component is a mobile (in any form) or an entity id
    forbidden = {
        *mobiles,
        *(f"86{m}" for m in mobiles),
        *(f"+86{m}" for m in mobiles),
        "LIC-PII-1",
        "CASE-PII-1",
        "CASE-PII-2",
        "CASE-PII-3",
        "EV-PII-3",
        *(e.event_id for e in events),
    }
    label = re.compile(r'="((?:[^"\\]|\\.)*)"')
    leaks = []
    for name, port in ports(settings).items():
        status, text = get(port, "/metrics")
        assert status == 200, name
        for line in text.splitlines():
            if line.startswith("#") or "{" not in line:
                continue
            for value in label.findall(line.split("{", 1)[1].rsplit("}", 1)[0]):
                if any(f in value for f in forbidden) or re.search(r"1[3-9]\d{9}", value):
                    leaks.append(f"{name}: {line}")
    assert not leaks, "\n".join(leaks[:10])
