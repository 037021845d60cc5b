"""Retention reaches the brokers: Kafka topics and RabbitMQ dead letters last retention_days.

On the session's Tansu (which answers DescribeConfigs and keeps the configs a CreateTopics
asked for, but has no AlterConfigs) and on the real RabbitMQ (operator policies, set with the
machine's ``rabbitmqctl``).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from infra import services
from infra.processes import wait_until
from infra.services import (
    apply_dead_letter_ttl,
    clear_dead_letter_ttl,
    create_topics,
    dead_letter_policy,
    topic_configs,
)
from infra.settings import Settings, load_settings
from tests.integration.test_topic_replication import layout

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


# ---- Kafka -------------------------------------------------------------------------------------
@pytest.mark.parametrize("days", [30, 7])
def test_event_topics_are_created_with_retention_days_and_the_epoch_topic_kept(
    tansu: services.TansuProcess, tmp_path: Path, days: int
) -> None:
    # Given settings with a retention of ``days``
    settings = load_settings(
        data_dir=tmp_path,
        namespace=f"t{uuid.uuid4().hex[:12]}",
        kafka_url=tansu.url,
        retention_days=days,
    )

    # When the topics are created as `services up` creates them
    created = create_topics(
        tansu.bootstrap,
        settings.topics,
        settings.kafka_partitions,
        min_insync_replicas=1,
        topic_configs=topic_configs(settings),
    )

    # Then the broker reports retention.ms of that many days on every event topic, and
    # "forever" on the epoch topic, beside min.insync.replicas
    assert sorted(created) == sorted(settings.topics)
    for topic in settings.stream_topics:
        assert layout(tansu.bootstrap, topic)[1] == {
            "min.insync.replicas": "1",
            "retention.ms": str(days * DAY_MS),
        }, topic
    assert layout(tansu.bootstrap, settings.epoch_topic)[1] == {
        "min.insync.replicas": "1",
        "retention.ms": "-1",
    }


def test_an_existing_topic_without_retention_is_reported_when_the_broker_cannot_alter_it(
    tansu: services.TansuProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a topic made before retention was set
    topic = f"t{uuid.uuid4().hex[:12]}.licenses"
    create_topics(tansu.bootstrap, [topic], 2)

    # When `services up` asks for its retention on Tansu, which has no AlterConfigs
    with caplog.at_level(logging.WARNING, logger="govnotify.services"):
        created = create_topics(
            tansu.bootstrap, [topic], 2, topic_configs={topic: {"retention.ms": str(DAY_MS)}}
        )

    # Then nothing is created, and the warning gives the exact command that sets it
    assert created == []
    assert (
        f"--alter --entity-type topics --entity-name {topic} --add-config retention.ms={DAY_MS}"
        in caplog.text
    )
    assert layout(tansu.bootstrap, topic)[1] == {}


# ---- RabbitMQ ----------------------------------------------------------------------------------
@pytest.fixture
def rabbit_settings(amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings of a fresh namespace; its policy and queues are removed afterwards."""
    settings = load_settings(
        data_dir=tmp_path, namespace=f"t{uuid.uuid4().hex[:12]}", amqp_url=amqp_url
    )
    try:
        yield settings
    finally:
        clear_dead_letter_ttl(settings)
        with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
            channel = connection.channel()
            for queue in (settings.dead_letter_queue, f"{settings.queue('delivery')}.XQ"):
                channel.queue_delete(queue=queue)


def _declare(settings: Settings, queue: str, queue_type: str) -> None:
    with pika.BlockingConnection(pika.URLParameters(settings.amqp_url)) as connection:
        connection.channel().queue_declare(
            queue=queue, durable=True, arguments={"x-queue-type": queue_type}
        )


def _publish(settings: Settings, queue: str, body: bytes) -> None:
    with pika.BlockingConnection(pika.URLParameters(settings.amqp_url)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange="", routing_key=queue, body=body)


def _depth(settings: Settings, queue: str) -> int:
    with pika.BlockingConnection(pika.URLParameters(settings.amqp_url)) as connection:
        ok = connection.channel().queue_declare(queue=queue, passive=True)
        return int(ok.method.message_count)


def _operator_policies() -> dict[str, dict[str, object]]:
    out = subprocess.run(
        ["rabbitmqctl", "list_operator_policies", "-p", "/", "--formatter", "json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return {p["name"]: p for p in json.loads(out or "[]")}


def test_the_dead_letter_policy_covers_the_events_dlq_and_every_job_dlq_of_its_namespace(
    tmp_path: Path,
) -> None:
    # Given / When
    settings = load_settings(data_dir=tmp_path, namespace="ns-a", retention_days=30)
    policy = dead_letter_policy(settings)

    # Then
    assert policy["definition"] == {"message-ttl": 30 * DAY_MS}
    assert policy["vhost"] == "/"
    pattern = re.compile(str(policy["pattern"]))
    assert pattern.match("ns-a.events.dead") and pattern.match("ns-a.delivery.XQ")
    assert not pattern.match("ns-a.relay") and not pattern.match("ns-a.delivery")
    assert not pattern.match("ns-ab.events.dead") and not pattern.match("other.delivery.XQ")


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_dead_letters_expire_after_the_policy_ttl_on_the_real_rabbitmq(
    rabbit_settings: Settings, queue_type: str
) -> None:
    settings = rabbit_settings
    dlq, job_dlq = settings.dead_letter_queue, f"{settings.queue('delivery')}.XQ"
    # Given dead-letter queues that exist already (declared without any TTL argument)
    for queue in (dlq, job_dlq):
        _declare(settings, queue, queue_type)

    # When services up sets the retention policy
    outcome = apply_dead_letter_ttl(settings)

    # Then the broker holds it, with retention_days as the TTL
    assert outcome == f"set ({settings.namespace}-dead-letter-ttl: message-ttl 30 days)"
    policy = _operator_policies()[f"{settings.namespace}-dead-letter-ttl"]
    definition = policy["definition"]
    assert (json.loads(definition) if isinstance(definition, str) else definition) == {
        "message-ttl": 30 * DAY_MS
    }

    # When the same policy is set with a TTL short enough to watch, and events are rejected
    apply_dead_letter_ttl(settings, ttl_ms=1500)
    for queue in (dlq, job_dlq):
        _publish(settings, queue, b'{"raw": "13800138000"}')

    # Then they are held, then dropped by the broker once the TTL is over
    assert _depth(settings, dlq) + _depth(settings, job_dlq) >= 1
    wait_until(
        lambda: _depth(settings, dlq) == 0 and _depth(settings, job_dlq) == 0,
        30,
        message=lambda: f"{_depth(settings, dlq)} and {_depth(settings, job_dlq)} left",
    )


def test_a_remote_broker_is_told_the_command_instead(tmp_path: Path) -> None:
    # Given settings pointing at a broker on another machine
    settings = load_settings(
        data_dir=tmp_path, namespace="ns-b", amqp_url="amqp://u:p@mq.example.gov.cn:5672/%2Fgov"
    )

    # When / Then nothing is run, and the answer is the command to run there
    outcome = apply_dead_letter_ttl(settings)
    assert outcome.startswith("not set (remote broker); run on it: rabbitmqctl set_operator_policy")
    assert "-p /gov" in outcome and '{"message-ttl": 2592000000}' in outcome
