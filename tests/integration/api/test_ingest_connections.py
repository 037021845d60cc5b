"""HTTP ingest publishes on RabbitMQ connections it keeps between requests.

Each POST used to open a connection (~10 round trips before the first publish, and a
connection made and torn down at RabbitMQ per request, however many requests a sender, or a
stranger with a token, made). Requests now take a kept connection from a pool that grows only
while every one is busy; one that died while idle is replaced without losing an event.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator

import pika
import pytest

from infra.settings import Settings
from infra.sources import HTTP_SOURCE_HEADER
from producers.ingest_http import close_connections, connections, publish_events
from schemas.events import Event, make_event

pytestmark = pytest.mark.integration

SOURCE = "permit-portal"


@pytest.fixture(autouse=True)
def _fresh_pools() -> Iterator[None]:
    # Each test starts without kept connections and leaves none open.
    close_connections()
    yield
    close_connections()


def _event() -> Event:
    payload = {
        "license_id": f"SX-WS-2026-{uuid.uuid4().int % 10**6:06d}",
        "reason": "经营场所已注销",
        "revoked_on": "2026-03-15",
    }
    return make_event("license.revoked", payload, source=SOURCE)


def _relayed(settings: Settings) -> list[tuple[str, str]]:
    """(event id, source header) of every event waiting for the relay, taken off its queue."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        found = []
        while True:
            method, props, _body = channel.basic_get(settings.relay_queue, auto_ack=True)
            if method is None:
                return found
            found.append((props.message_id, (props.headers or {}).get(HTTP_SOURCE_HEADER)))
    finally:
        connection.close()


def test_requests_one_after_another_share_one_connection(settings: Settings) -> None:
    # When three requests publish one after the other
    events = [_event() for _ in range(4)]
    outcomes = publish_events(settings, SOURCE, events[:1])
    pool = connections(settings)
    with pool.connection() as kept:
        first = kept.connection
    outcomes += publish_events(settings, SOURCE, events[1:3])
    outcomes += publish_events(settings, SOURCE, events[3:])

    # Then every event was confirmed, over the one connection the pool holds, still open
    assert outcomes == [(True, "")] * 4
    assert pool.size == 1
    with pool.connection() as kept:
        assert first is not None and first.is_open and kept.connection is first
    # … and each event waits for the relay once, in order, saying which source sent it
    assert _relayed(settings) == [(e.event_id, SOURCE) for e in events]


def test_concurrent_requests_each_get_a_connection_of_their_own(settings: Settings) -> None:
    # Given four request threads publishing at once, five requests each
    results: list[list[tuple[bool, str]]] = []
    lock = threading.Lock()
    events = [[_event() for _ in range(5)] for _ in range(4)]
    start = threading.Barrier(4)

    def request_thread(batch: list[Event]) -> None:
        start.wait()
        for event in batch:
            outcome = publish_events(settings, SOURCE, [event])
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=request_thread, args=(b,)) for b in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    # Then every event was confirmed, on no more connections than requests ran at once
    assert sorted(results) == [[(True, "")]] * 20
    assert 1 <= connections(settings).size <= 4
    # … and every event waits for the relay exactly once
    waiting = _relayed(settings)
    assert sorted(waiting) == sorted((e.event_id, SOURCE) for batch in events for e in batch)


def test_a_connection_that_died_while_idle_is_replaced_without_losing_an_event(
    settings: Settings,
) -> None:
    # Given a kept connection whose socket went away while no request used it
    first, second = _event(), _event()
    assert publish_events(settings, SOURCE, [first]) == [(True, "")]
    pool = connections(settings)
    with pool.connection() as kept:
        dead = kept.connection
    assert dead is not None
    dead._transport._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

    # When the next request publishes
    outcome = publish_events(settings, SOURCE, [second])

    # Then its event went out on a new connection, once
    assert outcome == [(True, "")]
    assert dead.is_closed
    with pool.connection() as kept:
        assert kept.connection is not None and kept.connection is not dead
    assert _relayed(settings) == [(first.event_id, SOURCE), (second.event_id, SOURCE)]


def test_closing_the_pools_closes_their_connections(settings: Settings) -> None:
    assert publish_events(settings, SOURCE, [_event()]) == [(True, "")]
    pool = connections(settings)
    with pool.connection() as kept:
        connection = kept.connection
    assert connection is not None and connection.is_open

    close_connections()

    assert connection.is_closed
    assert pool.size == 0
