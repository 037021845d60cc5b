"""The job sender keeps one RabbitMQ connection between its sends, and never trusts a dead one.

A frequent publisher (the stream hands a batch over every ~100 ms) opened a connection for each
send: ~10 round trips and up to 65 ms when the broker was busy. Each send now takes a channel
on a kept connection; one that died while idle is replaced without losing or doubling a job.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator

import pika
import pytest

from infra.jobs import JobSender
from infra.settings import Settings

pytestmark = pytest.mark.integration

ACTOR = "record_licenses"


@pytest.fixture
def sender(settings: Settings) -> Iterator[JobSender]:
    s = JobSender(settings, confirm_timeout=10)
    try:
        yield s
    finally:
        s.close()


def _drain(settings: Settings, queue: str) -> list[str]:
    """The ``license_id`` of every job on ``queue``, taken off it, in order."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        found = []
        while True:
            method, _props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            (payload,) = json.loads(body)["args"]
            found.extend(job["license_id"] for job in payload)
    finally:
        connection.close()


def _job(n: int) -> tuple[str, list[dict[str, object]]]:
    return (ACTOR, [{"license_id": f"L-{n}"}])


def test_sends_share_one_connection_and_every_job_arrives_once(
    settings: Settings, sender: JobSender
) -> None:
    # When three sends are made one after another
    sender.send_many([_job(1)])
    first = sender._kept.connection
    sender.send_many([_job(2), _job(3)])
    sender.send_many([_job(4)])

    # Then they went over the same open connection, and each job is queued once, in order
    assert first is not None and first.is_open
    assert sender._kept.connection is first
    assert _drain(settings, sender.queue_of(ACTOR)) == ["L-1", "L-2", "L-3", "L-4"]


def test_a_connection_that_died_while_idle_is_replaced_without_losing_a_job(
    settings: Settings, sender: JobSender, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a kept connection whose socket went away while nobody used it
    sender.send_many([_job(1)])
    dead = sender._kept.connection
    assert dead is not None
    dead._transport._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

    # When the next send is made
    with caplog.at_level(logging.INFO, logger="govnotify.publisher"):
        sender.send_many([_job(2)])

    # Then pika found it dead only then, and the job went out on a new connection, once
    assert "kept RabbitMQ connection was closed" in caplog.text
    assert dead.is_closed
    assert sender._kept.connection is not None and sender._kept.connection is not dead
    assert _drain(settings, sender.queue_of(ACTOR)) == ["L-1", "L-2"]


def test_a_connection_idle_past_its_limit_is_closed_and_replaced(
    settings: Settings, sender: JobSender
) -> None:
    # Given a kept connection and an idle limit every pause exceeds
    sender.send_many([_job(1)])
    old = sender._kept.connection
    sender._kept.idle_limit_s = 0.0

    # When the next send is made
    sender.send_many([_job(2)])

    # Then the old connection was closed, not left open at the broker, and a new one used
    assert old is not None and old.is_closed
    assert sender._kept.connection is not old
    assert _drain(settings, sender.queue_of(ACTOR)) == ["L-1", "L-2"]


def test_close_closes_the_kept_connection(sender: JobSender) -> None:
    sender.send_many([_job(1)])
    kept = sender._kept.connection
    sender.close()
    assert kept is not None and kept.is_closed
    assert sender._kept.connection is None
