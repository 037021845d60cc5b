"""``govnotify sources add|list|disable`` on the real RabbitMQ and PostgreSQL: the user it creates
can publish the source's events through the relay, credentials are shown once and never listed,
and every change is in the operator audit."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import pika
import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from infra.sources import RabbitmqUsers, authenticate_token, find_source
from producers.generator import license_event
from producers.rabbitmq import Publisher
from schemas.models import IngestEvent, OperatorAudit
from tests.support import Pipeline, env_for, run_cli, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def made_users(settings: Settings) -> Iterator[list[str]]:
    """RabbitMQ users the test's commands may create; deleted afterwards."""
    names: list[str] = []
    yield names
    users = RabbitmqUsers.for_url(settings.amqp_url)
    for name in names:
        users.delete(name)


def _credential(label: str, output: str) -> str:
    found = re.search(rf"^  {label}: (\S+)$", output, re.MULTILINE)
    assert found, output
    return found.group(1)


def test_sources_add_list_disable(
    settings: Settings, pipeline: Pipeline, made_users: list[str]
) -> None:
    # Given a relay, and the names of a new upstream system and of an HTTP-only kiosk
    env = env_for(settings)
    lic, lic2, kiosk = (f"lic-{settings.namespace}", f"arc-{settings.namespace}", "kiosk")
    made_users.append(lic)
    pipeline.relay()

    # When an operator adds them, a second source for the first one's user, and a bad one
    added = run_cli(
        "sources", "add", lic, "--types", "license.issued, license.renewed", "--operator", "ops1",
        env=env,
    )  # fmt: skip
    again = run_cli(
        "sources", "add", lic2, "--types", "license.revoked", "--user", lic, "--operator", "ops1",
        env=env,
    )  # fmt: skip
    http = run_cli(
        "sources", "add", kiosk, "--types", "case.submitted", "--http-token", "--operator", "ops1",
        env=env,
    )  # fmt: skip
    bad = run_cli(
        "sources", "add", f"bad-{settings.namespace}", "--types", "license.stolen", env=env
    )
    listed = run_cli("sources", "list", env=env)

    # Then the first prints its new user's password once, the second reuses that user, the
    # kiosk gets a token and no user, the bad one is refused before anything is made
    assert added.returncode == 0, added.stderr
    password = _credential("AMQP password", added.stdout)
    assert "may send license.issued, license.renewed" in added.stdout
    assert again.returncode == 0, again.stderr
    assert "exists already" in again.stdout and password not in again.stdout
    assert "AMQP password" not in again.stdout
    assert http.returncode == 0, http.stderr
    token = _credential("HTTP token", http.stdout)
    assert "HTTP only" in http.stdout
    assert bad.returncode == 2 and "unknown event type(s) 'license.stolen'" in bad.stderr
    assert not RabbitmqUsers.for_url(settings.amqp_url).exists(f"bad-{settings.namespace}")
    # … the list shows all three (and the built-in ones), never a secret
    assert listed.returncode == 0, listed.stderr
    for name in (lic, lic2, kiosk):
        assert name in listed.stdout
    assert password not in listed.stdout and token not in listed.stdout
    # … the token authenticates the kiosk, and the new user publishes through the relay
    found = authenticate_token(settings, token)
    assert found is not None and found.name == kiosk
    params = pika.URLParameters(settings.amqp_url)
    url = f"amqp://{lic}:{password}@{params.host}:{params.port}/%2F"
    event = license_event(
        "license.issued",
        "LIC-CLI-1",
        category="food_business",
        issued_on=dt.date(2026, 6, 1),
        expires_on=dt.date(2027, 6, 1),
        occurred_at=dt.datetime(2026, 6, 1, 8, tzinfo=dt.UTC),
        source=lic,
    )
    with Publisher(url, settings.exchange) as publisher:
        publisher.publish(event)
    wait_until(lambda: _journaled(settings, event.event_id), 30, message="not accepted")

    # When the source is disabled
    disabled = run_cli("sources", "disable", lic, "--operator", "ops2", env=env)

    # Then it is, and every change is in the audit, by whom
    assert disabled.returncode == 0, disabled.stderr
    assert f"source {lic} disabled" in disabled.stdout
    with session(settings) as s:
        row = find_source(s, lic)
        audit = s.execute(select(OperatorAudit).order_by(OperatorAudit.id)).scalars().all()
    assert row is not None and row.disabled_at is not None
    assert [(a.operator, a.action, a.subject) for a in audit] == [
        ("ops1", "sources.add", lic),
        ("ops1", "sources.add", lic2),
        ("ops1", "sources.add", kiosk),
        ("ops2", "sources.disable", lic),
    ]
    assert all(password not in a.detail and token not in a.detail for a in audit)


def _journaled(settings: Settings, event_id: str) -> bool:
    with session(settings) as s:
        return s.get(IngestEvent, event_id) is not None
