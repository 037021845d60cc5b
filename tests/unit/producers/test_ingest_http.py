"""HTTP ingest's answers, per request shape (the real registry, RabbitMQ and relay are in
tests/integration/api/test_ingest.py; here the source and the broker's answers are given)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pytest

from infra.amqp import Outcome
from infra.settings import Settings, load_settings
from producers.http_guards import Refusal
from producers.ingest_http import HttpIngest
from schemas.events import Event, make_event
from schemas.models import Source

TOKEN = "gn1.0123456789abcdef." + "A" * 43
PORTAL = Source(name="permit-portal", event_types="license.revoked", token_hash="x")


def revoked(source: str = "permit-portal") -> dict[str, object]:
    event = make_event(
        "license.revoked",
        {"license_id": "SX-WS-2026-000001", "reason": "吊销", "revoked_on": "2026-03-15"},
        source=source,
    )
    return json.loads(event.to_json_bytes())


@dataclass
class Broker:
    """What RabbitMQ answers for each published event, and what it was given."""

    confirms: bool = True
    published: list[tuple[str, str]] | None = None

    def __call__(self, settings: Settings, source: str, events: list[Event]) -> list[Outcome]:
        self.published = [(source, e.event_id) for e in events]
        return [(True, "") if self.confirms else (False, "connection lost") for _ in events]


def post(
    ingest: HttpIngest, body: object, authorization: str | None = f"Bearer {TOKEN}"
) -> tuple[int, dict[str, Any]]:
    raw = json.dumps(body).encode()
    environ: dict[str, Any] = {
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": io.BytesIO(raw),
    }
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    status, answer, _ = ingest.handle(environ)
    return status, json.loads(answer)


def ingest_with(broker: Broker) -> HttpIngest:
    return HttpIngest(
        load_settings(),
        authenticate=lambda settings, token: PORTAL if token == TOKEN else None,
        publish=broker,
    )


@pytest.mark.parametrize(
    ("body", "confirms", "status", "accepted"),
    [
        (revoked(), True, 200, [True]),
        ([revoked(), revoked()], True, 200, [True, True]),
        (revoked("license-registry"), True, 422, [False]),
        ([revoked(), revoked("license-registry")], True, 207, [True, False]),
        ([revoked("license-registry"), 7], True, 207, [False, False]),
        ([revoked(), revoked()], False, 503, [False, False]),
    ],
)
def test_the_status_says_what_became_of_the_events(
    body: object, confirms: bool, status: int, accepted: list[bool]
) -> None:
    # Given
    broker = Broker(confirms=confirms)

    # When
    code, answer = post(ingest_with(broker), body)

    # Then
    assert code == status
    assert [r["accepted"] for r in answer["results"]] == accepted
    assert [r["index"] for r in answer["results"]] == list(range(len(accepted)))
    # only events that passed every check were handed to the broker, as the token's source
    expected = sum(1 for r in answer["results"] if r.get("reason") != "unauthorised")
    expected -= sum(1 for r in answer["results"] if r.get("reason") == "malformed_json")
    assert len(broker.published or []) == expected
    assert {source for source, _ in broker.published or []} <= {"permit-portal"}


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer short", f"bearer  {TOKEN}1"],
)
def test_every_way_of_lacking_a_token_is_the_same_401(authorization: str | None) -> None:
    # Given
    broker = Broker()

    # When / Then
    with pytest.raises(Refusal) as refused:
        post(ingest_with(broker), revoked(), authorization)
    assert (refused.value.status, refused.value.detail) == (401, "no valid bearer token")
    assert broker.published is None
