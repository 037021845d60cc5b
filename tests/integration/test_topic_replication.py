"""Replication factor and ``min.insync.replicas`` of the topics ``create_topics`` makes.

Checked on the session's Tansu, which keeps what a CreateTopics request asked for: the replica
list of each partition (Tansu has one broker, so a factor of 3 lists it three times; a real
Kafka with fewer brokers than replicas refuses with error 38 INVALID_REPLICATION_FACTOR) and
the topic config, read back with aiokafka's ``describe_configs``. Tansu reports only configs
set on the topic, not broker defaults, so "none sent" reads back as no entry.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from infra import services
from infra.services import (
    clear_dead_letter_ttl,
    create_topics,
    new_topics,
    services_down,
    services_up,
)
from infra.settings import Settings, load_settings

pytestmark = pytest.mark.integration


async def _layout(bootstrap: str, topic: str) -> tuple[list[int], dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        replicas = [len(p["replicas"]) for p in described["partitions"]]
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
        (resource,) = response.resources
        error_code, _message, _type, _name, entries = resource
        assert error_code == 0, resource
        return replicas, {entry[0]: entry[1] for entry in entries}
    finally:
        await admin.close()


def layout(bootstrap: str, topic: str) -> tuple[list[int], dict[str, str]]:
    """Replicas of each partition of ``topic``, and the configs set on it."""
    return services._run(_layout(bootstrap, topic))


def _topic() -> str:
    return f"t{uuid.uuid4().hex[:12]}.replicated"


# ---- the request -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("replication_factor", "min_insync", "configs"),
    [(1, 1, {"min.insync.replicas": "1"}), (3, 2, {"min.insync.replicas": "2"}), (3, None, None)],
)
def test_new_topics_carry_the_replication_factor_and_min_insync_replicas(
    replication_factor: int, min_insync: int | None, configs: dict[str, str] | None
) -> None:
    # Given / When the CreateTopics entries for two topics are built
    built = new_topics(
        ["a", "b"], 4, replication_factor=replication_factor, min_insync_replicas=min_insync
    )

    # Then each names its topic, partitions, replication factor and topic config
    assert [(t.name, t.num_partitions, t.replication_factor, t.topic_configs) for t in built] == [
        (name, 4, replication_factor, configs or {}) for name in ("a", "b")
    ]


@pytest.mark.parametrize(
    ("replication_factor", "min_insync"), [(1, 1), (3, 2), (3, 3)], ids=["1-1", "3-2", "3-3"]
)
def test_created_topics_get_the_replicas_and_min_insync_replicas_asked_for(
    tansu: services.TansuProcess, replication_factor: int, min_insync: int
) -> None:
    # Given a topic that does not exist
    topic = _topic()

    # When it is created with a replication factor and min.insync.replicas
    created = create_topics(
        tansu.bootstrap,
        [topic],
        3,
        replication_factor=replication_factor,
        min_insync_replicas=min_insync,
    )

    # Then the broker holds it with that many replicas per partition and that topic config
    assert created == [topic]
    assert layout(tansu.bootstrap, topic) == (
        [replication_factor] * 3,
        {"min.insync.replicas": str(min_insync)},
    )


def test_without_min_insync_replicas_no_topic_config_is_sent(
    tansu: services.TansuProcess,
) -> None:
    # Given / When a topic is created with the defaults
    topic = _topic()
    create_topics(tansu.bootstrap, [topic], 2)

    # Then it has one replica per partition and no config of its own (the broker's default)
    assert layout(tansu.bootstrap, topic) == ([1, 1], {})


@pytest.mark.parametrize(
    ("replication_factor", "min_insync", "error"),
    [(0, None, "replication_factor"), (2, 3, "min_insync_replicas"), (2, 0, "min_insync")],
)
def test_impossible_replication_is_refused_before_asking_the_broker(
    replication_factor: int, min_insync: int | None, error: str
) -> None:
    # Given / When / Then (nothing listens on the bootstrap: the check comes first)
    with pytest.raises(ValueError, match=error):
        create_topics(
            "127.0.0.1:9",
            ["never"],
            1,
            replication_factor=replication_factor,
            min_insync_replicas=min_insync,
        )


# ---- services up -----------------------------------------------------------------------------
@pytest.fixture
def db_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``services``' migration step recording its calls: migrations are infra.db's own tests,
    here only topics matter."""
    calls: list[Any] = []
    monkeypatch.setattr(services, "upgrade", calls.append)
    return calls


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("tansu", (1, "1")), ("kafka", (3, "2"))],
    ids=["tansu: 1 replica, min.insync 1", "kafka: the settings, 3 and 2"],
)
def test_services_up_creates_topics_with_the_settings_replication(
    tansu: services.TansuProcess,
    tmp_path: Path,
    db_calls: list[Any],
    kind: str,
    expected: tuple[int, str],
) -> None:
    # Given settings for a broker of that kind (the session's Tansu stands in for a cluster:
    # it accepts any replication factor), with the default 3 replicas and min.insync 2
    settings: Settings = load_settings(
        data_dir=tmp_path / "data",
        namespace=f"t{uuid.uuid4().hex[:12]}",
        kafka_url=tansu.url,
        kafka_broker_kind=kind,
    )
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)

    # When the services are brought up
    try:
        result = services_up(settings)
    finally:
        services_down(settings)
        clear_dead_letter_ttl(settings)

    # Then every topic got the replication of its kind of broker, and the retention of the
    # settings (the epoch topic keeps its marker for good)
    assert result["topics"] == f"created {len(settings.topics)}"
    replicas, min_insync = expected
    for topic in settings.topics:
        keep = "-1" if topic == settings.epoch_topic else str(settings.retention_days * 86_400_000)
        assert layout(tansu.bootstrap, topic) == (
            [replicas] * settings.kafka_partitions,
            {"min.insync.replicas": min_insync, "retention.ms": keep},
        ), topic
    assert result["dead_letter_ttl"].startswith("set (")
