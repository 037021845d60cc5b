"""Publisher identity on the real RabbitMQ: the relay accepts an event only from the AMQP user
that owns its source, for a type that source may send, routed by its type. Everything else is a
dead letter ``unauthorised`` that never reaches the journal or Kafka.

Two upstream users are created for each test (write-only on the ingest exchange, as
``govnotify sources add`` makes them) and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker
from sqlalchemy import select

from infra.db import session
from infra.deadletters import replay_letter
from infra.settings import Settings
from infra.sources import (
    HTTP_SOURCE_HEADER,
    REGISTRY_TTL_S,
    RabbitmqUsers,
    add_source,
    disable_source,
)
from producers import replay as _ingest_replayer  # noqa: F401  (registers the ingest replayer)
from producers.generator import license_event
from producers.rabbitmq import Publisher
from schemas.events import DEFAULT_RATING_SOURCE, Event, make_event
from schemas.models import DeadLetter, IngestEvent, Source
from tests.support import Pipeline, metric, scrape, wait_until
from tests.support.cases import case_event, evaluation

pytestmark = pytest.mark.integration

AT = dt.datetime(2026, 11, 20, 9, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Upstream:
    """A RabbitMQ user made for the test: its name and AMQP URL (with its password)."""

    user: str
    url: str


def _url(base: str, user: str, password: str) -> str:
    params = pika.URLParameters(base)
    vhost = "%2F" if params.virtual_host == "/" else params.virtual_host
    return f"amqp://{user}:{password}@{params.host}:{params.port}/{vhost}"


@pytest.fixture
def upstreams(settings: Settings) -> Iterator[dict[str, Upstream]]:
    """Users ``a``, ``b`` and ``c`` (unique names), write-only on the exchange; deleted after."""
    users = RabbitmqUsers.for_url(settings.amqp_url)
    made: dict[str, Upstream] = {}
    try:
        for key in ("a", "b", "c"):
            name = f"{settings.namespace}-{key}"
            password = users.create_publisher(name, settings.exchange)
            made[key] = Upstream(name, _url(settings.amqp_url, name, password))
        yield made
    finally:
        for upstream in made.values():
            users.delete(upstream.user)


def _license(license_id: str, event_type: str = "license.issued", **kw: object) -> Event:
    return license_event(
        event_type,
        license_id,
        category="food_business",
        issued_on=dt.date(2026, 6, 1),
        expires_on=dt.date(2027, 6, 1),
        occurred_at=AT,
        **kw,  # type: ignore[arg-type]
    )


def _publish(url: str, exchange: str, event: Event, **kw: object) -> None:
    with Publisher(url, exchange) as publisher:
        publisher.publish_raw(
            event.to_json_bytes(),
            str(kw.pop("routing_key", event.event_type)),
            message_id=event.event_id,
            **kw,  # type: ignore[arg-type]
        )


def _publish_without_user_id(url: str, exchange: str, event: Event) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange,
            event.event_type,
            event.to_json_bytes(),
            pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
            mandatory=True,
        )
    finally:
        connection.close()


def _letters(settings: Settings) -> list[DeadLetter]:
    with session(settings) as s:
        return list(s.execute(select(DeadLetter).where(DeadLetter.stage == "ingest")).scalars())


def _journaled(settings: Settings) -> set[str]:
    with session(settings) as s:
        return set(s.execute(select(IngestEvent.event_id)).scalars())


def _kafka_event_ids(settings: Settings, until: set[str], timeout_s: float = 30) -> set[str]:
    """Every event id in the ingest topics, read from the start until ``until`` are all seen."""

    async def read() -> set[str]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        seen: set[str] = set()
        try:
            topics = [settings.topic(f) for f in ("licenses", "cases", "evaluations")]
            parts = [
                TopicPartition(t, p)
                for t in topics
                for p in sorted(consumer.partitions_for_topic(t) or {0})
            ]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            deadline = time.monotonic() + timeout_s
            while not until <= seen:
                assert time.monotonic() < deadline, f"not in Kafka: {until - seen}"
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    seen.update(json.loads(r.value)["event_id"] for r in records if r.value)
        finally:
            await consumer.stop()
        return seen

    return asyncio.run(read())


def test_only_the_owner_of_a_source_may_publish_its_events(
    settings: Settings, pipeline: Pipeline, upstreams: dict[str, Upstream]
) -> None:
    # Given: user a owns license-registry (issued only); user b owns case-system; user c owns
    # nothing; kiosk posts over HTTP only. Registered before the relay starts, which then adds
    # only the sample sources missing for guest (its own user here).
    a, b, c = upstreams["a"], upstreams["b"], upstreams["c"]
    with session(settings) as s:
        add_source(s, "license-registry", ["license.issued"], amqp_user=a.user, operator="t")
        add_source(s, "case-system", ["case.submitted"], amqp_user=b.user, operator="t")
        add_source(s, "kiosk", ["case.submitted"], amqp_user=None, http_token=True, operator="t")
        s.commit()
    Publisher.from_settings(settings).close()  # the topology, as govnotify declares it
    pipeline.relay()
    ex = settings.exchange

    def kiosk(case_id: str) -> Event:
        return make_event(
            "case.submitted",
            case_event("case.submitted", case_id, AT).payload.model_dump(mode="json"),
            source="kiosk",
            occurred_at=AT,
        )

    # When: each publishes (the accepted ones last, so Kafka holding them means every
    # rejected one was handled before)
    rejected = {
        "b-as-license-registry": (b, _license("LIC-B"), {}),
        "type-not-allowed": (a, _license("LIC-R", "license.renewed"), {}),
        "routing-key": (a, _license("LIC-K"), {"routing_key": "license.renewed"}),
        "unknown-user": (c, _license("LIC-C"), {}),
        "default-rating-from-upstream": (
            a,
            make_event(
                "evaluation.submitted",
                evaluation("CASE-D", 3, AT).payload.model_dump(mode="json"),
                source=DEFAULT_RATING_SOURCE,
                occurred_at=AT,
            ),
            {},
        ),
        "http-header-from-upstream": (a, kiosk("K-A"), {"headers": {HTTP_SOURCE_HEADER: "kiosk"}}),
    }
    for who, event, kw in rejected.values():
        _publish(who.url, ex, event, **kw)
    no_user_id = _license("LIC-NOID")
    _publish_without_user_id(a.url, ex, no_user_id)
    accepted = [
        (a, _license("LIC-A"), {}),
        (b, case_event("case.submitted", "CASE-B", AT), {}),
        # govnotify's own user (guest here): its default rating, and an HTTP source's event
        (
            guest := Upstream("guest", settings.amqp_url),
            make_event(
                "evaluation.submitted",
                evaluation("CASE-G", 3, AT).payload.model_dump(mode="json"),
                source=DEFAULT_RATING_SOURCE,
                occurred_at=AT,
            ),
            {},
        ),
        (guest, kiosk("K-G"), {"headers": {HTTP_SOURCE_HEADER: "kiosk"}}),
    ]
    for who, event, kw in accepted:
        _publish(who.url, ex, event, **kw)
    accepted_ids = {event.event_id for _who, event, _kw in accepted}
    in_kafka = _kafka_event_ids(settings, accepted_ids)
    wait_until(lambda: len(_letters(settings)) >= len(rejected) + 1, 30, message="letters")

    # Then: every rejected one is a dead letter "unauthorised" saying why …
    letters = _letters(settings)
    by_raw = {bytes(letter.raw): letter for letter in letters}
    assert {letter.reason for letter in letters} == {"unauthorised"}
    assert len(letters) == len(rejected) + 1
    why = {
        name: by_raw[event.to_json_bytes()].detail for name, (_w, event, _kw) in rejected.items()
    }
    assert f"is not published by AMQP user '{b.user}'" in why["b-as-license-registry"]
    assert "may not send 'license.renewed'" in why["type-not-allowed"]
    assert "routing key 'license.renewed' is not the event type" in why["routing-key"]
    assert f"AMQP user '{c.user}' publishes no registered source" in why["unknown-user"]
    assert (
        f"'{DEFAULT_RATING_SOURCE}' is not published by AMQP user '{a.user}'"
        in (why["default-rating-from-upstream"])
    )
    assert (
        f"source 'kiosk' is not published by AMQP user '{a.user}'"
        in (why["http-header-from-upstream"])
    )
    assert "no AMQP user_id" in by_raw[no_user_id.to_json_bytes()].detail
    # (the event id is known once parsed; an unknown publisher's bytes are not parsed)
    assert by_raw[rejected["b-as-license-registry"][1].to_json_bytes()].event_id is not None
    assert by_raw[rejected["unknown-user"][1].to_json_bytes()].event_id is None
    # … none of them is in the journal or in Kafka; the accepted ones are in both
    rejected_ids = {event.event_id for _w, event, _kw in rejected.values()}
    rejected_ids.add(no_user_id.event_id)
    assert _journaled(settings) == accepted_ids
    assert not rejected_ids & in_kafka
    assert accepted_ids <= in_kafka
    # … and the rejection metric counts them under their reason
    assert (
        metric(
            scrape(settings.relay_metrics_port),
            "govnotify_events_rejected_total",
            reason="unauthorised",
        )
        == len(rejected) + 1
    )


def test_an_upstream_user_may_only_write_and_cannot_lie_about_who_it_is(
    settings: Settings, upstreams: dict[str, Upstream]
) -> None:
    # Given the topology, and user a made as `sources add` makes it
    Publisher.from_settings(settings).close()
    a, b = upstreams["a"], upstreams["b"]
    connection = pika.BlockingConnection(pika.URLParameters(a.url))
    try:
        # When it declares a queue, reads the relay's queue, or claims to be user b
        # Then RabbitMQ refuses each: no configure, no read, and user_id must be its login
        with pytest.raises(ChannelClosedByBroker) as declared:
            connection.channel().queue_declare(f"{settings.namespace}.mine")
        assert declared.value.reply_code == 403
        with pytest.raises(ChannelClosedByBroker) as read:
            connection.channel().basic_get(settings.relay_queue)
        assert read.value.reply_code == 403
        channel = connection.channel()
        channel.confirm_delivery()
        with pytest.raises(ChannelClosedByBroker) as lied:
            channel.basic_publish(
                settings.exchange,
                "license.issued",
                _license("LIC-LIE").to_json_bytes(),
                pika.BasicProperties(user_id=b.user),
            )
        assert lied.value.reply_code == 406
    finally:
        if connection.is_open:
            connection.close()


def test_a_disabled_source_is_refused_within_seconds(
    settings: Settings, pipeline: Pipeline, upstreams: dict[str, Upstream]
) -> None:
    # Given user a owning license-registry (and another source), its events accepted by a
    # running relay
    a = upstreams["a"]
    with session(settings) as s:
        add_source(s, "license-registry", ["license.issued"], amqp_user=a.user, operator="t")
        add_source(s, "license-archive", ["license.revoked"], amqp_user=a.user, operator="t")
        s.commit()
    Publisher.from_settings(settings).close()
    pipeline.relay()
    first = _license("LIC-ON")
    _publish(a.url, settings.exchange, first)
    wait_until(lambda: first.event_id in _journaled(settings), 30, message="not accepted")

    # When the source is disabled
    with session(settings) as s:
        disable_source(s, "license-registry", operator="t")
    disabled_at = time.monotonic()

    # Then its events are dead letters from a few seconds on (the relay's registry TTL)
    def refused() -> bool:
        event = _license(f"LIC-OFF-{uuid.uuid4().hex[:6]}")
        _publish(a.url, settings.exchange, event)
        wait_until(
            lambda: (
                event.event_id in _journaled(settings)
                or any(bytes(x.raw) == event.to_json_bytes() for x in _letters(settings))
            ),
            30,
            interval=0.05,
        )
        return event.event_id not in _journaled(settings)

    wait_until(refused, 30, interval=0.1, message="disabled source still accepted")
    took = time.monotonic() - disabled_at
    assert took < REGISTRY_TTL_S + 3, took
    (letter,) = [x for x in _letters(settings) if x.reason == "unauthorised"]
    assert "source 'license-registry' is disabled" in letter.detail


def test_a_replayed_letter_is_judged_as_its_first_publisher(
    settings: Settings, pipeline: Pipeline, upstreams: dict[str, Upstream]
) -> None:
    # Given user a owning license-registry for license.issued only, user b owning nothing of
    # it, and a relay running
    a, b = upstreams["a"], upstreams["b"]
    with session(settings) as s:
        add_source(s, "license-registry", ["license.issued"], amqp_user=a.user, operator="t")
        add_source(s, "case-system", ["case.submitted"], amqp_user=b.user, operator="t")
        s.commit()
    Publisher.from_settings(settings).close()
    pipeline.relay()
    # a sends a renewal (not yet granted), b forges an issue as license-registry
    renewal = _license("LIC-RENEW", "license.renewed")
    forged = _license("LIC-FORGED")
    _publish(a.url, settings.exchange, renewal)
    _publish(b.url, settings.exchange, forged)
    wait_until(lambda: len(_letters(settings)) == 2, 30, message="letters")
    letters = {x.event_id: x for x in _letters(settings)}
    assert (letters[renewal.event_id].publisher, letters[forged.event_id].publisher) == (
        a.user,
        b.user,
    )

    # When a's source is granted renewals (a probe renewal from a shows the relay knows), and
    # govnotify replays both letters
    with session(settings) as s:
        row = s.get(Source, "license-registry")
        assert row is not None
        row.event_types = "license.issued,license.renewed"
        s.commit()

    def granted() -> bool:
        probe = _license(f"LIC-PROBE-{uuid.uuid4().hex[:6]}", "license.renewed")
        _publish(a.url, settings.exchange, probe)
        wait_until(
            lambda: (
                probe.event_id in _journaled(settings)
                or any(x.event_id == probe.event_id for x in _letters(settings))
            ),
            30,
            interval=0.05,
        )
        return probe.event_id in _journaled(settings)

    wait_until(granted, REGISTRY_TTL_S + 30, interval=0.2, message="the grant never took effect")
    letters = {x.event_id: x for x in _letters(settings) if x.event_id in letters}
    outcomes = {}
    for letter in letters.values():
        outcomes[letter.event_id] = replay_letter(settings, letter).result

    # Then a's renewal is accepted (on a's rights, once its cache has the grant), b's forgery is
    # refused again: the replay is published by govnotify's user on each one's behalf
    assert set(outcomes.values()) == {"replayed"}
    wait_until(lambda: renewal.event_id in _journaled(settings), 30, message="renewal")
    wait_until(
        lambda: any(
            x.event_id == forged.event_id and x.status == "open" and x.count == 2
            for x in _letters(settings)
        ),
        30,
        message="the forged event was not refused again",
    )
    assert forged.event_id not in _journaled(settings)
