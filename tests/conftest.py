"""Fixtures on the real services: one Tansu per session, a fresh PostgreSQL database and a unique
namespace (queues, topics, consumer groups) per test, and every process stopped by pid."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import services
from infra.settings import Settings, load_settings
from tests.support import (
    Pipeline,
    create_database,
    drop_database,
    purge_namespace,
    unmasked_mobiles,
)

#: Admin URL of the test PostgreSQL server (trust auth on this machine and in CI).
PG_ADMIN_URL = os.environ.get(
    "GOVNOTIFY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
AMQP_URL = os.environ.get("GOVNOTIFY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    services.check_rabbitmq(AMQP_URL, start=True)
    return AMQP_URL


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.TansuProcess]:
    """One Kafka-compatible broker for the whole session; tests use unique topic names."""
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    proc = services.start_tansu(services.free_port(), log)
    try:
        yield proc
    finally:
        services.stop_pid(proc.pid)


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def database_url(namespace: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test, dropped afterwards."""
    url = create_database(PG_ADMIN_URL, f"govnotify_{namespace}")
    try:
        yield url
    finally:
        drop_database(PG_ADMIN_URL, url)


@pytest.fixture
def settings(
    namespace: str, database_url: str, tmp_path: Path, amqp_url: str, tansu: services.TansuProcess
) -> Iterator[Settings]:
    """Settings for one isolated pipeline; its topics exist, its queues are deleted afterwards."""
    s = load_settings(
        namespace=namespace,
        data_dir=tmp_path / "data",
        amqp_url=amqp_url,
        kafka_url=tansu.url,
        database_url=database_url,
        relay_metrics_port=services.free_port(),
        stream_metrics_port=services.free_port(),
        worker_metrics_port=services.free_port(),
        scheduler_metrics_port=services.free_port(),
    )
    services.create_topics(s.kafka_bootstrap, s.topics, s.kafka_partitions)
    try:
        yield s
    finally:
        purge_namespace(s)


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    """Starts components as real processes on demand; stops every one at the end."""
    p = Pipeline(settings, tmp_path / "logs")
    try:
        yield p
    finally:
        p.stop_all()
    # Every log line every component wrote during the test: no full phone number in any.
    leaks = unmasked_mobiles(p.log_dir)
    assert not leaks, "full mobile numbers in logs:\n" + "\n".join(leaks[:10])
