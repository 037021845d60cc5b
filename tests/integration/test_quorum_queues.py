"""Quorum queues (``GOVNOTIFY_RABBITMQ_QUEUE_TYPE=quorum``) on the real RabbitMQ.

A single-node quorum queue behaves as on a cluster for everything checked here: the work
queues dramatiq declares (each with its ``.DQ`` and ``.XQ``) and the ingest queues of
``declare_topology`` are really quorum queues, with dramatiq's dead-letter and TTL arguments
kept; a job is consumed by a real dramatiq Worker; retries go through ``.DQ`` and a job out of
retries is dead-lettered into ``.XQ``. Queue types and arguments are read from
``rabbitmqctl list_queues`` (this machine and CI run RabbitMQ locally, as root).

``workers.broker`` is imported inside the tests, not at collection: importing it sets this
process's dramatiq broker and clock, which other tests of the session must not inherit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
import pika
import pytest
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
from dramatiq.middleware import Middleware

from infra.settings import Settings, load_settings
from producers.rabbitmq import Publisher, declare_topology, queue_arguments, queue_depth
from tests.support import wait_until

if TYPE_CHECKING:
    from workers.broker import QueueTypeBroker

pytestmark = pytest.mark.integration

#: Longest wait for a job to be consumed, retried or dead-lettered.
DEADLINE_S = 30.0


# ---- helpers ---------------------------------------------------------------------------------
def list_queues(prefix: str) -> dict[str, dict[str, Any]]:
    """``{name: {"type": …, "arguments": {key: value}}}`` of the queues named ``prefix…``."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    assert rabbitmqctl, "rabbitmqctl is needed to read queue types (run as root)"
    result = subprocess.run(
        [rabbitmqctl, "list_queues", "-q", "--formatter", "json", "name", "type", "arguments"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {
        q["name"]: {"type": q["type"], "arguments": {k: v for k, _t, v in q["arguments"]}}
        for q in json.loads(result.stdout)
        if q["name"].startswith(prefix)
    }


def _channel_do(amqp_url: str, fn: Any) -> Any:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return fn(connection.channel())
    finally:
        if connection.is_open:
            connection.close()


def _xq_messages(amqp_url: str, queue: str) -> list[dramatiq.Message[Any]]:
    """Every message on ``queue`` (taken off it), decoded as dramatiq messages."""

    def take(channel: Any) -> list[dramatiq.Message[Any]]:
        got = []
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return got
            got.append(dramatiq.Message.decode(body))

    return _channel_do(amqp_url, take)  # type: ignore[no-any-return]


class EnqueueRecorder(Middleware):
    """Every queue the broker published a message to, in order."""

    def __init__(self) -> None:
        self.queues: list[str] = []
        self._lock = threading.Lock()

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        with self._lock:
            self.queues.append(message.queue_name)


@pytest.fixture
def quorum_settings(namespace: str, amqp_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings of a fresh namespace with quorum queues; every queue of it deleted afterwards."""
    s = load_settings(
        namespace=namespace,
        amqp_url=amqp_url,
        data_dir=tmp_path / "data",
        rabbitmq_queue_type="quorum",
    )
    try:
        yield s
    finally:

        def delete(channel: Any) -> None:
            for queue in list_queues(f"{namespace}."):
                channel.queue_delete(queue)
            channel.exchange_delete(s.exchange)

        _channel_do(amqp_url, delete)


@pytest.fixture
def broker(quorum_settings: Settings) -> Iterator[QueueTypeBroker]:
    from workers.broker import make_broker

    b = make_broker(quorum_settings.amqp_url, queue_type="quorum")
    try:
        yield b
    finally:
        b.close()


def _run_worker(broker: QueueTypeBroker) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    return worker


# ---- declarations ----------------------------------------------------------------------------
@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_the_broker_declares_queue_dq_and_xq_of_the_type_keeping_dramatiqs_arguments(
    quorum_settings: Settings, queue_type: str
) -> None:
    # Given a broker made for the queue type
    from workers.broker import make_broker

    broker = make_broker(quorum_settings.amqp_url, queue_type=queue_type)
    queue = quorum_settings.queue("alerts")

    # When it declares a work queue
    try:
        broker.declare_queue(queue, ensure=True)
    finally:
        broker.close()

    # Then the queue, its .DQ and its .XQ exist, all of that type
    declared = list_queues(f"{quorum_settings.namespace}.")
    assert {name: q["type"] for name, q in declared.items()} == {
        queue: queue_type,
        f"{queue}.DQ": queue_type,
        f"{queue}.XQ": queue_type,
    }
    # with dramatiq's own arguments kept, and x-queue-type only for quorum (classic queues
    # are declared exactly as before the setting, so existing ones still match)
    typed = {"x-queue-type": "quorum"} if queue_type == "quorum" else {}
    dead_letters = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue}.XQ"}
    assert declared[queue]["arguments"] == {**dead_letters, **typed}
    assert declared[f"{queue}.DQ"]["arguments"] == {**dead_letters, **typed}
    assert declared[f"{queue}.XQ"]["arguments"] == {"x-message-ttl": DEAD_MESSAGE_TTL, **typed}


def test_the_publisher_declares_the_relay_queue_and_the_dlq_as_quorum_queues(
    quorum_settings: Settings,
) -> None:
    # Given / When a publisher from quorum settings declares the ingest topology and publishes
    with Publisher.from_settings(quorum_settings) as publisher:
        publisher.publish_raw(b"{}", "license.issued", message_id="m-1")

    # Then the relay queue and the DLQ are quorum queues
    declared = list_queues(f"{quorum_settings.namespace}.")
    assert {name: q["type"] for name, q in declared.items()} == {
        quorum_settings.relay_queue: "quorum",
        quorum_settings.dead_letter_queue: "quorum",
    }
    # and the confirmed message is on the relay queue
    assert queue_depth(quorum_settings, quorum_settings.relay_queue) == 1


def test_redeclaring_a_quorum_namespace_as_classic_is_refused_by_rabbitmq(
    quorum_settings: Settings,
) -> None:
    # Given the ingest topology declared with quorum queues
    s = quorum_settings
    _channel_do(
        s.amqp_url,
        lambda ch: declare_topology(
            ch, s.exchange, s.relay_queue, s.dead_letter_queue, queue_type="quorum"
        ),
    )

    # When a component still configured for classic queues declares it, then RabbitMQ refuses
    # (so the type of a namespace cannot be switched without deleting its queues)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        _channel_do(
            s.amqp_url,
            lambda ch: declare_topology(ch, s.exchange, s.relay_queue, s.dead_letter_queue),
        )
    assert refused.value.reply_code == 406
    assert "inequivalent arg 'x-queue-type'" in refused.value.reply_text
    # and the queues stay quorum queues
    assert list_queues(s.relay_queue)[s.relay_queue]["type"] == "quorum"


@pytest.mark.parametrize(
    ("kind", "options", "error"),
    [
        ("publisher", {"queue_type": "stream"}, "queue_type must be one of"),
        ("broker", {"queue_type": "lazy"}, "queue_type must be one of"),
        ("broker", {"queue_type": "quorum", "max_priority": 10}, "x-max-priority"),
    ],
    ids=["unknown type (publisher)", "unknown type (broker)", "quorum with max_priority"],
)
def test_an_unsupported_queue_declaration_is_refused_before_reaching_rabbitmq(
    kind: str, options: dict[str, Any], error: str
) -> None:
    from workers.broker import QueueTypeBroker

    with pytest.raises(ValueError, match=error):
        if kind == "publisher":
            queue_arguments(**options)
        else:
            QueueTypeBroker(**options)


# ---- work on quorum queues -------------------------------------------------------------------
def test_a_job_on_a_quorum_queue_is_consumed_by_a_worker(
    quorum_settings: Settings, broker: QueueTypeBroker
) -> None:
    # Given an actor on the alerts queue of a quorum broker, and a worker running
    done = threading.Event()
    received: list[str] = []

    def raise_alert(case_id: str) -> None:
        received.append(case_id)
        done.set()

    actor = dramatiq.actor(
        raise_alert, broker=broker, queue_name=quorum_settings.queue("alerts"), priority=0
    )
    worker = _run_worker(broker)
    try:
        # When a job is enqueued through the broker
        actor.send("case-1")

        # Then the worker runs it
        assert done.wait(DEADLINE_S), "the job was not consumed"
    finally:
        worker.stop()

    assert received == ["case-1"]
    # on a quorum queue, left empty
    queue = quorum_settings.queue("alerts")
    declared = list_queues(queue)
    assert declared[queue]["type"] == "quorum"
    assert queue_depth(quorum_settings, queue) == 0


def test_retries_go_through_the_dq_and_a_job_out_of_retries_is_dead_lettered_into_the_xq(
    quorum_settings: Settings, broker: QueueTypeBroker
) -> None:
    # Given an actor that always fails, with two quick retries, on a quorum broker that
    # records where it publishes, and a worker running
    recorder = EnqueueRecorder()
    broker.add_middleware(recorder)
    queue = quorum_settings.queue("surveys")
    attempts: list[int] = []
    lock = threading.Lock()

    def send_survey(n: int) -> None:
        with lock:
            attempts.append(n)
        raise RuntimeError("provider down")

    actor = dramatiq.actor(
        send_survey, broker=broker, queue_name=queue, max_retries=2, min_backoff=50, max_backoff=100
    )
    worker = _run_worker(broker)
    try:
        # When a job is enqueued
        sent = actor.send(7)

        # Then it is tried three times, and then lies on the .XQ (RabbitMQ dead-lettered it)
        wait_until(lambda: len(attempts) == 3, DEADLINE_S, message=lambda: f"tries: {attempts}")
        wait_until(
            lambda: queue_depth(quorum_settings, f"{queue}.XQ") == 1,
            DEADLINE_S,
            interval=0.2,
            message="the job was not dead-lettered into the .XQ",
        )
    finally:
        worker.stop()

    dead = _xq_messages(quorum_settings.amqp_url, f"{queue}.XQ")
    assert [(m.message_id, m.actor_name, m.args) for m in dead] == [
        (sent.message_id, "send_survey", (7,))
    ]
    # as RabbitMQ stored it when the worker last published it (after the second retry)
    assert dead[0].options["retries"] == 2
    # each retry was published to the .DQ, then back onto the queue when due
    assert recorder.queues == [queue, f"{queue}.DQ", queue, f"{queue}.DQ", queue]
    # all three queues are quorum queues, and nothing is left on the others
    declared = list_queues(queue)
    assert {name: q["type"] for name, q in declared.items()} == {
        queue: "quorum",
        f"{queue}.DQ": "quorum",
        f"{queue}.XQ": "quorum",
    }
    assert queue_depth(quorum_settings, queue) == 0
    assert queue_depth(quorum_settings, f"{queue}.DQ") == 0
