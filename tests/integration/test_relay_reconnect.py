"""The relay rides out a lost RabbitMQ connection: it reconnects, and loses or repeats nothing.

RabbitMQ itself keeps running (other tests share it): the relay reaches it through a loopback
TCP relay that the test cuts, as a broker restart or a load balancer would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from infra.settings import Settings
from producers.generator import license_event
from schemas.events import Event
from schemas.models import IngestEvent
from tests.fakes.tcp_relay import TcpRelay
from tests.support import Pipeline, count_rows, metric, publish, scrape, wait_until

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def proxy(settings: Settings) -> Iterator[TcpRelay]:
    parts = urlsplit(settings.amqp_url)
    relay = TcpRelay((parts.hostname or "127.0.0.1", parts.port or 5672))
    try:
        yield relay
    finally:
        relay.stop()


def licenses(prefix: str, n: int) -> list[Event]:
    return [
        license_event(
            "license.issued",
            f"{prefix}-{i:03d}",
            category="food_business",
            issued_on=dt.date(2025, 1, 1),
            expires_on=dt.date(2030, 1, 1),
            occurred_at=T0,
        )
        for i in range(n)
    ]


def relayed(settings: Settings) -> int:
    return count_rows(settings, IngestEvent, IngestEvent.relayed_at.is_not(None))


def test_the_relay_reconnects_after_its_connection_is_cut_and_relays_each_event_once(
    settings: Settings, pipeline: Pipeline, proxy: TcpRelay
) -> None:
    # Given a relay that reaches RabbitMQ through the cuttable proxy, having relayed 50 events
    pipeline.set_env(GOVNOTIFY_AMQP_URL=proxy.url(settings.amqp_url))
    relay = pipeline.relay()
    publish(settings, licenses("LIC-A", 50))
    wait_until(lambda: relayed(settings) == 50, 60)

    # When its connections are cut (RabbitMQ restarted, as far as it can tell) and more come
    proxy.cut()
    publish(settings, licenses("LIC-B", 50))

    # Then it reconnects by itself and relays them, each once
    wait_until(
        lambda: relayed(settings) == 100,
        90,
        message=lambda: f"{relayed(settings)} relayed\n{relay.log_tail()}",
    )
    assert relay.alive()
    assert "reconnecting" in relay.log_path.read_text()
    samples = scrape(settings.relay_metrics_port)
    assert metric(samples, "govnotify_events_relayed_total") == 100
