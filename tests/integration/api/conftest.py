"""`govnotify api` as a real process, with Twilio (the fake) and the gateway configured, and the
small HTTP helpers its tests share."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from infra import services
from infra.db import session
from infra.settings import Settings
from notifiers.sms.gateway import signed_headers
from schemas.models import Notification, utcnow
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline

FROM = "+15017122661"
BODY = "【长安政务】您的办件回访已安排，工作人员将与您联系。"
GATEWAY_KEY = "govnotify-test-key"
GATEWAY_SECRET = "gateway-secret-for-tests-0123456789"


@pytest.fixture
def api_settings(settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio) -> Settings:
    """The test's settings with Twilio (the fake), the gateway and the api's own ports; the
    same values go to every process the pipeline starts from here on."""
    port = services.free_port()
    overrides: dict[str, object] = {
        "twilio_account_sid": fake_twilio.account_sid,
        "twilio_auth_token": fake_twilio.auth_token,
        "twilio_from": FROM,
        "twilio_api_base": fake_twilio.base_url,
        "gateway_url": "http://127.0.0.1:9/never-called",
        "gateway_key_id": GATEWAY_KEY,
        "gateway_secret": GATEWAY_SECRET,
        "gateway_generic_template": "SMS_000001",
        # Twilio first, as production routes it.
        "sms_routes": {"default": ["twilio", "gateway"]},
        "api_port": port,
        "api_metrics_port": services.free_port(),
        "public_base_url": f"http://127.0.0.1:{port}",
    }
    pipeline.set_env(
        **{
            f"GOVNOTIFY_{name.upper()}": json.dumps(value)
            if isinstance(value, dict)
            else str(value)
            for name, value in overrides.items()
        }
    )
    return settings.model_copy(update=overrides)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> dict[str, object]:
        return json.loads(self.body)


def request(
    settings: Settings,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    timeout: float = 10.0,
) -> Answer:
    """One HTTP request to the api, on a connection of its own; the answer, whatever its code."""
    connection = http.client.HTTPConnection("127.0.0.1", settings.api_port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.read())
    finally:
        connection.close()


def twilio_sid() -> str:
    return "SM" + uuid.uuid4().hex


def add_sent(settings: Settings, *, provider: str, provider_ref: str, recipient: str) -> str:
    """A notification row as the worker leaves it: ``sent``, with the provider's reference."""
    now = utcnow()
    row = Notification(
        idempotency_key=f"test:{uuid.uuid4().hex}",
        flow="callback_notice",
        channel="sms",
        subject_id="CASE-1",
        recipient=recipient,
        body=BODY,
        status="sent",
        provider=provider,
        provider_ref=provider_ref,
        category="callbacks",
        critical=True,
        attempts=1,
        claimed_at=now,
        sent_at=now,
    )
    with session(settings) as s:
        s.add(row)
        s.commit()
    return row.id


def status_of(settings: Settings, notification_id: str) -> str:
    with session(settings) as s:
        row = s.get(Notification, notification_id)
        assert row is not None
        return str(row.status)


def gateway_headers(raw: bytes, **sign: object) -> dict[str, str]:
    headers = signed_headers(GATEWAY_KEY, GATEWAY_SECRET, raw, **sign)  # type: ignore[arg-type]
    headers["Content-Type"] = "application/json"
    return headers


@pytest.fixture
def api(api_settings: Settings, pipeline: Pipeline) -> Iterator[Settings]:
    """The api running for ``api_settings`` (stopped by pid with the pipeline)."""
    pipeline.api()
    yield api_settings


def wait_for_log(pipeline: Pipeline, needle: str, count: int, timeout: float = 10) -> list[str]:
    """The api's log lines containing ``needle`` once there are ``count`` of them."""
    path = pipeline.log_dir / "api.log"
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in path.read_text(errors="replace").splitlines() if needle in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)
