"""infra.services against real processes: Tansu, RabbitMQ and PostgreSQL on this machine."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import services
from infra.services import (
    ServiceError,
    check_postgres,
    check_rabbitmq,
    create_topics,
    free_port,
    port_open,
    services_down,
    services_status,
    services_up,
    start_tansu,
    state_path,
    stop_pid,
    topic_partitions,
)
from infra.settings import Settings, load_settings

pytestmark = pytest.mark.integration

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _pid_gone(pid: int) -> bool:
    return not services._pid_alive(pid)


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Pids the test started; each is stopped at teardown, also when the test failed."""
    started: list[int] = []
    yield started
    for pid in started:
        stop_pid(pid)


@pytest.fixture
def tansu(tmp_path: Path, pids: list[int]) -> services.TansuProcess:
    proc = start_tansu(free_port(), tmp_path / "tansu.log")
    pids.append(proc.pid)
    return proc


@pytest.fixture
def db_calls(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """``services``' migration step recording its calls instead of migrating.

    The real migrations are infra.db's own tests (test_migrations.py); here only the call is
    checked.
    """
    calls: list[Settings] = []
    monkeypatch.setattr(services, "upgrade", calls.append)
    return calls


@pytest.fixture
def embedded_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pids: list[int], db_calls: list[Settings]
) -> Iterator[Settings]:
    """Settings for the embedded broker, moved to a free port; its Tansu is stopped at the end."""
    port = free_port()
    monkeypatch.setattr(services, "EMBEDDED_KAFKA_PORT", port)
    # So that settings.kafka_bootstrap (read by other modules) agrees with the moved port.
    monkeypatch.setattr("infra.settings.EMBEDDED_KAFKA_PORT", port)
    settings = load_settings(
        data_dir=tmp_path / "data", namespace=f"t{uuid.uuid4().hex[:12]}", kafka_url=""
    )
    yield settings
    # `up` set the namespace's dead-letter TTL policy on the shared RabbitMQ: removed again.
    services.clear_dead_letter_ttl(settings)
    # Whatever `up` started and the test did not bring down is stopped by the pids fixture.
    try:
        record = json.loads(state_path(settings).read_text()).get("tansu", {})
    except FileNotFoundError:
        record = {}
    if isinstance(record.get("pid"), int):
        pids.append(record["pid"])


# ---- Tansu and topics ----------------------------------------------------------------------
def test_tansu_topics_are_created_with_their_partition_count(
    tansu: services.TansuProcess,
) -> None:
    # Given a running Tansu and two new topic names
    base = f"t-{uuid.uuid4().hex[:8]}"
    topics = [f"{base}.a", f"{base}.b"]
    assert topic_partitions(tansu.bootstrap, topics[0]) is None

    # When they are created with 3 partitions, twice
    created = create_topics(tansu.bootstrap, topics, 3)
    again = create_topics(tansu.bootstrap, topics, 3)

    # Then each has 3 partitions and the second call created nothing
    assert sorted(created) == topics
    assert again == []
    assert [topic_partitions(tansu.bootstrap, t) for t in topics] == [3, 3]


def test_existing_topic_with_other_partition_count_is_an_error(
    tansu: services.TansuProcess,
) -> None:
    # Given a topic with 3 partitions
    topic = f"t-{uuid.uuid4().hex[:8]}.a"
    create_topics(tansu.bootstrap, [topic], 3)

    # When it is asked for with 5
    with pytest.raises(ServiceError) as err:
        create_topics(tansu.bootstrap, [topic], 5)

    # Then the error names the topic and both counts, and the topic is unchanged
    assert topic in str(err.value)
    assert "3 partitions" in str(err.value) and "5 wanted" in str(err.value)
    assert topic_partitions(tansu.bootstrap, topic) == 3


def test_topic_partitions_does_not_auto_create(tansu: services.TansuProcess) -> None:
    # Given a topic nobody created
    topic = f"t-{uuid.uuid4().hex[:8]}.ghost"

    # When its partition count is asked for twice
    first = topic_partitions(tansu.bootstrap, topic)
    second = topic_partitions(tansu.bootstrap, topic)

    # Then it still does not exist (Tansu auto-creates topics a metadata request names)
    assert first is None and second is None


def test_stop_pid_closes_the_port(tansu: services.TansuProcess) -> None:
    # Given a running Tansu
    assert port_open("127.0.0.1", tansu.port)

    # When it is stopped by pid
    was_running = stop_pid(tansu.pid)

    # Then it was running, is gone, and its port is closed; stopping again is a no-op
    assert was_running
    assert _pid_gone(tansu.pid)
    assert not port_open("127.0.0.1", tansu.port)
    assert stop_pid(tansu.pid) is False


def test_start_tansu_on_a_taken_port_fails_with_its_log(tmp_path: Path) -> None:
    # Given a port something else listens on
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        # When Tansu is started there
        started = time.monotonic()
        with pytest.raises(ServiceError) as err:
            start_tansu(port, tmp_path / "tansu.log")

    # Then it fails fast, quoting the broker's log
    assert time.monotonic() - started < 10
    assert "Address in use" in str(err.value) or "exited" in str(err.value)
    assert str(tmp_path / "tansu.log") in str(err.value)


# ---- services up / status / down -----------------------------------------------------------
def test_services_up_status_down_with_embedded_tansu(
    embedded_settings: Settings, db_calls: list[Settings]
) -> None:
    settings = embedded_settings
    port = services.EMBEDDED_KAFKA_PORT

    # When the services are brought up
    result = services_up(settings)

    # Then Tansu is started, recorded by pid, the topics exist and migrations ran
    assert result["kafka"] == "started"
    assert result["rabbitmq"] in ("up", "started")
    assert result["postgres"] == "skipped"  # SQLite default
    assert result["topics"] == f"created {len(settings.topics)}"
    assert result["database"] == "migrated"
    assert db_calls == [settings]
    record = json.loads(state_path(settings).read_text())["tansu"]
    pid = record["pid"]
    assert record["port"] == port
    for topic in settings.topics:
        assert topic_partitions(f"127.0.0.1:{port}", topic) == settings.kafka_partitions

    # And status reports it up with its pid
    status = services_status(settings)
    assert status["kafka"].startswith("up") and str(pid) in status["kafka"]
    assert status["rabbitmq"].startswith("up")

    # When up runs again while it is running
    second = services_up(settings)

    # Then the same broker is reused
    assert second["kafka"] == "up"
    assert second["topics"] == f"created 0, {len(settings.topics)} existed"
    assert json.loads(state_path(settings).read_text())["tansu"]["pid"] == pid

    # When the services are brought down
    down = services_down(settings)

    # Then Tansu is gone, its port closed, and the state file removed
    assert down["kafka"] == f"stopped Tansu pid {pid}"
    assert _pid_gone(pid)
    assert not port_open("127.0.0.1", port)
    assert not state_path(settings).exists()
    assert services_status(settings)["kafka"].startswith("down")


def test_services_up_refuses_a_port_taken_by_another_program(
    embedded_settings: Settings,
) -> None:
    # Given the embedded port held by something that is not our Tansu
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", services.EMBEDDED_KAFKA_PORT))
        squatter.listen()

        # When the services are brought up
        with pytest.raises(ServiceError) as err:
            services_up(embedded_settings)

    # Then the error names the port and the setting that avoids it, and nothing was recorded
    assert str(services.EMBEDDED_KAFKA_PORT) in str(err.value)
    assert "GOVNOTIFY_KAFKA_URL" in str(err.value)
    assert "tansu" not in json.loads(state_path(embedded_settings).read_text())


def test_services_up_against_external_kafka(
    tansu: services.TansuProcess, tmp_path: Path, db_calls: list[Settings]
) -> None:
    # Given GOVNOTIFY_KAFKA_URL pointing at a running broker
    settings = load_settings(
        data_dir=tmp_path / "data", namespace=f"t{uuid.uuid4().hex[:12]}", kafka_url=tansu.url
    )

    # When the services are brought up, then down
    try:
        result = services_up(settings)
        down = services_down(settings)
    finally:
        services.clear_dead_letter_ttl(settings)

    # Then that broker got the topics, nothing was recorded to stop, and it still runs
    assert result["kafka"] == "up"
    assert topic_partitions(tansu.bootstrap, settings.topics[0]) == settings.kafka_partitions
    assert down["kafka"].startswith("nothing to stop")
    assert port_open("127.0.0.1", tansu.port)


# ---- RabbitMQ and PostgreSQL ---------------------------------------------------------------
def test_check_rabbitmq_up() -> None:
    # Given the machine's RabbitMQ / When it is checked / Then it is up
    assert check_rabbitmq(RABBITMQ_URL) == "up"


def test_check_rabbitmq_unreachable_names_the_fix_without_the_password() -> None:
    # Given a loopback URL on a port nothing listens on (not 5672, so no auto-start)
    url = f"amqp://guest:s3cret-pw@127.0.0.1:{free_port()}/"

    # When it is checked with start allowed
    with pytest.raises(ServiceError) as err:
        check_rabbitmq(url, start=True)

    # Then the message says how to start it and hides the password
    message = str(err.value)
    assert "rabbitmq-server -detached" in message
    assert "s3cret-pw" not in message
    assert "guest:***@127.0.0.1" in message


def test_check_rabbitmq_wrong_password_is_not_leaked() -> None:
    # Given the running broker and a wrong password
    url = "amqp://guest:not-the-pw-xyz@127.0.0.1:5672/"

    # When it is checked
    with pytest.raises(ServiceError) as err:
        check_rabbitmq(url)

    # Then it is refused and the password is not in the message
    assert "refused" in str(err.value)
    assert "not-the-pw-xyz" not in str(err.value)


def test_check_postgres_up() -> None:
    # Given the machine's PostgreSQL / When it is checked / Then it is up
    assert check_postgres(POSTGRES_URL) == "up"


def test_check_postgres_skips_sqlite() -> None:
    assert check_postgres("sqlite:///x") == "skipped"


def test_check_postgres_unreachable() -> None:
    # Given a URL on a port no cluster is configured for
    url = f"postgresql+psycopg://postgres:pg-secret-1@127.0.0.1:{free_port()}/test"

    # When it is checked with start allowed
    with pytest.raises(ServiceError) as err:
        check_postgres(url, start=True)

    # Then the message names the fix and hides the password
    assert "pg_ctlcluster" in str(err.value)
    assert "pg-secret-1" not in str(err.value)


def test_status_reports_a_down_rabbitmq(tmp_path: Path) -> None:
    # Given settings whose RabbitMQ port is closed
    settings = load_settings(
        data_dir=tmp_path,
        namespace=f"t{uuid.uuid4().hex[:12]}",
        amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    )

    # When status is asked for
    status = services_status(settings)

    # Then RabbitMQ is down and nothing was started
    assert status["rabbitmq"].startswith("down")
