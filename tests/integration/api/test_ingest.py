"""HTTP ingest (`POST /events`) through the real api, RabbitMQ, the relay and PostgreSQL.

A source registered with an HTTP token (infra.sources) posts events; each gets its own answer,
the accepted ones reach the ingest journal through the relay, and nothing is published for a
request without a valid token.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import uuid

import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from infra.sources import create_source, disable_source
from producers.generator import license_event
from producers.rabbitmq import Publisher
from schemas.events import Event, make_event
from schemas.models import DeadLetter, IngestEvent
from tests.integration.api.conftest import request
from tests.support import Pipeline, count_rows, metric, queue_depth, scrape, wait_until

pytestmark = pytest.mark.integration

SOURCE = "permit-portal"
TYPES = ("license.issued", "license.revoked")


def license_id() -> str:
    return f"SX-WS-2026-{uuid.uuid4().int % 10**6:06d}"


def revoked(source: str = SOURCE) -> Event:
    payload = {"license_id": license_id(), "reason": "经营场所已注销", "revoked_on": "2026-03-15"}
    return make_event("license.revoked", payload, source=source)


def renewed() -> Event:
    """A valid event of a type :data:`SOURCE` may not send."""
    return license_event(
        "license.renewed",
        license_id(),
        category="food_business",
        issued_on=dt.date(2026, 3, 15),
        expires_on=dt.date(2031, 3, 15),
        occurred_at=dt.datetime.now(dt.UTC),
        source=SOURCE,
    )


def as_json(event: Event) -> dict[str, object]:
    return json.loads(event.to_json_bytes())


def post_events(
    settings: Settings, body: object, token: str | None, **headers: str
) -> tuple[int, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    sent = {"Content-Type": "application/json", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    answer = request(settings, "/events", raw, sent)
    return answer.status, answer.body


def status_for_headers(settings: Settings, headers: dict[str, str]) -> int:
    """The status the api answers a ``POST /events`` with these headers and no body yet."""
    lines = [
        "POST /events HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", settings.api_port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


def http_source(settings: Settings, name: str = SOURCE, types: tuple[str, ...] = TYPES) -> str:
    """Register ``name`` for HTTP ingest; its token."""
    created = create_source(settings, name, types, amqp_user=None, http_token=True, operator="test")
    assert created.http_token is not None
    return created.http_token


def test_a_batch_gets_an_answer_per_event_and_the_good_ones_reach_the_journal(
    api_settings: Settings, pipeline: Pipeline
) -> None:
    # Given a source with an HTTP token, and the relay and the api running
    token = http_source(api_settings)
    pipeline.relay()
    pipeline.api()
    good = [revoked(), revoked()]
    other_source = revoked(source="license-registry")
    batch: list[object] = [
        as_json(good[0]),
        {**as_json(revoked()), "payload": {"license_id": "X"}},  # a field missing
        as_json(other_source),  # the source is not the token's
        42,  # not an event at all
        {**as_json(revoked()), "event_type": "license.unheard_of"},
        as_json(good[1]),
    ]

    # When the batch is posted with the source's token
    status, body = post_events(api_settings, batch, token)

    # Then the answer is 207 with one result per event, in order
    answer = json.loads(body)
    assert status == 207, answer
    outcomes = [(r["index"], r["accepted"], r.get("reason")) for r in answer["results"]]
    assert outcomes == [
        (0, True, None),
        (1, False, "schema_violation"),
        (2, False, "unauthorised"),
        (3, False, "malformed_json"),
        (4, False, "unknown_type"),
        (5, True, None),
    ]
    assert (answer["accepted"], answer["rejected"]) == (2, 4)
    assert answer["results"][0]["event_id"] == good[0].event_id
    assert answer["results"][2]["event_id"] == other_source.event_id
    # and the accepted events are journaled by the relay, as the source's own
    wait_until(lambda: count_rows(api_settings, IngestEvent) == 2, 30)
    with session(api_settings) as s:
        journal = s.execute(select(IngestEvent)).scalars().all()
    assert {row.event_id for row in journal} == {e.event_id for e in good}
    assert {json.loads(row.body)["source"] for row in journal} == {SOURCE}
    # the rejected ones were never published: the relay dead-lettered nothing
    assert count_rows(api_settings, DeadLetter) == 0
    samples = scrape(api_settings.api_metrics_port)
    assert metric(samples, "govnotify_http_ingest_events_total", result="accepted") == 2
    assert metric(samples, "govnotify_http_ingest_events_total", result="unauthorised") == 1

    # When one good event is posted alone, then one the source may not send
    single = revoked()
    status_one, _ = post_events(api_settings, as_json(single), token)
    status_type, body_type = post_events(api_settings, as_json(renewed()), token)

    # Then the first is a 200 and journaled, the second a 422 `unauthorised`
    assert status_one == 200
    assert status_type == 422
    assert json.loads(body_type)["results"][0]["reason"] == "unauthorised"
    wait_until(lambda: count_rows(api_settings, IngestEvent) == 3, 30)
    assert count_rows(api_settings, IngestEvent, IngestEvent.event_id == single.event_id) == 1


def test_without_a_valid_token_nothing_is_published(
    api_settings: Settings, pipeline: Pipeline
) -> None:
    # Given a source with an HTTP token, a disabled one, the queues declared, no relay
    token = http_source(api_settings)
    disabled = http_source(api_settings, "old-portal")
    with session(api_settings) as s:
        disable_source(s, "old-portal", operator="test")
    Publisher.from_settings(api_settings).close()
    pipeline.api()
    event = as_json(revoked())
    token_id = token.split(".")[1]

    # When good events are posted without a valid token
    answers = {
        "no header": post_events(api_settings, event, None),
        "another scheme": post_events(api_settings, event, None, Authorization=f"Basic {token}"),
        "a wrong secret": post_events(api_settings, event, f"gn1.{token_id}.{'A' * 43}"),
        "an unknown token": post_events(api_settings, event, "gn1.0123456789abcdef." + "B" * 43),
        "garbage": post_events(api_settings, event, "x" * 300),
        "a disabled source's": post_events(api_settings, event, disabled),
    }

    # Then each is a 401 alike, with nothing on the relay's queue
    assert {name: answer for name, answer in answers.items()} == {
        name: (401, b"unauthorised\n") for name in answers
    }
    assert queue_depth(api_settings, api_settings.relay_queue) == 0
    samples = scrape(api_settings.api_metrics_port)
    assert metric(samples, "govnotify_http_ingest_requests_total", status="401") == len(answers)
    # and the right token publishes (so the queue would have shown them)
    assert post_events(api_settings, event, token)[0] == 200
    wait_until(lambda: queue_depth(api_settings, api_settings.relay_queue) == 1, 10)


def test_malformed_or_oversize_bodies_are_refused_whole(
    api_settings: Settings, pipeline: Pipeline
) -> None:
    # Given a source with an HTTP token, the queues declared, the api running
    token = http_source(api_settings)
    Publisher.from_settings(api_settings).close()
    pipeline.api()
    one = as_json(revoked())

    # When bodies that are not an event or a batch, or too large, are posted
    table = {
        "not JSON": (b"{not json", 400),
        "not UTF-8": (b'{"a": "\xff"}', 400),
        "a string": (b'"event"', 400),
        "an empty batch": (b"[]", 400),
        "text after the batch": (json.dumps([one]).encode() + b" []", 400),
        "an unterminated batch": (json.dumps([one]).encode()[:-1], 400),
        "nested 5,000 deep": (b"[" * 5000 + b"]" * 5000, 400),
        "501 events": (json.dumps([one] * 501).encode(), 413),
    }
    answers = {name: post_events(api_settings, body, token)[0] for name, (body, _) in table.items()}
    wrong_type = post_events(api_settings, one, token, **{"Content-Type": "text/plain"})[0]
    over_cap = status_for_headers(
        api_settings, {"Authorization": f"Bearer {token}", "Content-Length": str(1024**2 + 1)}
    )

    # Then each is refused whole (over the cap before the body is even sent) …
    assert answers == {name: code for name, (_, code) in table.items()}
    assert wrong_type == 400
    assert over_cap == 413
    # … and nothing was published
    assert queue_depth(api_settings, api_settings.relay_queue) == 0


def test_a_broker_that_does_not_confirm_is_a_503_and_claims_nothing(
    api_settings: Settings, pipeline: Pipeline
) -> None:
    # Given the api pointed at a RabbitMQ that is not there
    token = http_source(api_settings)
    pipeline.set_env(GOVNOTIFY_AMQP_URL="amqp://guest:guest@127.0.0.1:9/")
    pipeline.api()

    # When a batch is posted
    status, body = post_events(api_settings, [as_json(revoked()), as_json(revoked())], token)

    # Then it is a 503 and no event is said to be accepted
    answer = json.loads(body)
    assert status == 503
    assert answer["accepted"] == 0
    assert {r["reason"] for r in answer["results"]} == {"not_confirmed"}


def test_an_occurred_at_in_the_future_is_refused_as_the_relay_would(
    api_settings: Settings, pipeline: Pipeline
) -> None:
    # Given a source with an HTTP token and the api running
    token = http_source(api_settings)
    Publisher.from_settings(api_settings).close()
    pipeline.api()
    future = make_event(
        "license.revoked",
        {"license_id": "SX-WS-2026-999999", "reason": "吊销", "revoked_on": "2026-03-15"},
        source=SOURCE,
        occurred_at=dt.datetime(9999, 12, 31, tzinfo=dt.UTC),
    )

    # When an event dated 9999-12-31 is posted
    status, body = post_events(api_settings, as_json(future), token)

    # Then it is refused, and not published
    assert status == 422
    assert json.loads(body)["results"][0]["reason"] == "occurred_in_future"
    assert queue_depth(api_settings, api_settings.relay_queue) == 0
