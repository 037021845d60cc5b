"""The api refuses hostile requests cleanly, cheaply and in one log line each (a real process).

Each attack here worked on the api before issue 11: a 500 with a long traceback for a signed
gateway report with a non-ASCII timestamp or deeply nested JSON, ~155 ms of CPU for a forged
256 KiB body of 34,000 form fields, and a genuine Twilio signature kept valid by moving text
from one parameter into another (the sid was then looked up as it came).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from infra.db import session
from infra.settings import Settings
from schemas.models import NotificationStatusEvent
from tests.fakes.twilio_server import FakeTwilio
from tests.integration.api.conftest import (
    add_sent,
    gateway_headers,
    request,
    status_of,
    twilio_sid,
    wait_for_log,
)
from tests.support import Pipeline, metric, scrape

pytestmark = pytest.mark.integration

TWILIO = "/callbacks/twilio/status"
GATEWAY = "/callbacks/gateway/status"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Bad:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]


def signed_form(
    settings: Settings,
    twilio: FakeTwilio,
    signed: dict[str, str],
    sent: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a Twilio callback signed over ``signed`` and carrying ``sent``."""
    url = settings.api_public_url + TWILIO
    signature = RequestValidator(twilio.auth_token).compute_signature(url, signed)
    body = urllib.parse.urlencode(sent if sent is not None else signed).encode()
    return body, {"Content-Type": FORM, "X-Twilio-Signature": signature}


def genuine(twilio: FakeTwilio, sid: str, status: str = "delivered") -> dict[str, str]:
    return {
        "AccountSid": twilio.account_sid,
        "MessageSid": sid,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
    }


def shifted(twilio: FakeTwilio, sid: str) -> dict[str, str]:
    """``genuine`` with ``MessageStatus`` moved into the sid: the same sorted concatenation of
    names and values, so Twilio's signature of ``genuine`` still verifies."""
    params = genuine(twilio, sid)
    del params["MessageStatus"]
    params["MessageSid"] = sid + "MessageStatus" + "delivered"
    return params


def malformed_requests(settings: Settings, twilio: FakeTwilio) -> list[Bad]:
    sid = twilio_sid()
    report = {"biz_id": "9006197469364984^0", "status": "DELIVERED"}
    raw = json.dumps({"reports": [report]}).encode()
    nested = b'{"reports": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    unsigned_twilio = {"Content-Type": FORM, "X-Twilio-Signature": "c2lnbmF0dXJl"}
    many = b"&".join([b"a%d=1" % i for i in range(65)])

    def gateway(body: bytes, **changes: str) -> Bad:
        headers = {**gateway_headers(body), **changes}
        name = "gateway " + (", ".join(changes) or body[:30].decode(errors="replace"))
        return Bad(name, GATEWAY, body, headers)

    return [
        Bad("twilio: not a form", TWILIO, b"{}", {**unsigned_twilio, "Content-Type": "text/json"}),
        Bad("twilio: not UTF-8", TWILIO, b"MessageSid=\xff\xfe", unsigned_twilio),
        Bad("twilio: not form-encoded", TWILIO, b"MessageSid&&=", unsigned_twilio),
        Bad("twilio: 65 fields", TWILIO, many, unsigned_twilio),
        Bad("twilio: 2,000 fields in 8 KiB", TWILIO, b"a=&" * 2000, unsigned_twilio),
        Bad("twilio: a field twice", TWILIO, b"MessageSid=SM1&MessageSid=SM2", unsigned_twilio),
        Bad(
            "twilio: signed, text moved into the sid",
            TWILIO,
            *signed_form(settings, twilio, genuine(twilio, sid), shifted(twilio, sid)),
        ),
        Bad(
            "twilio: signed, sid not a sid",
            TWILIO,
            *signed_form(settings, twilio, genuine(twilio, "SM../../etc/passwd")),
        ),
        Bad(
            "twilio: signed, two sids",
            TWILIO,
            *signed_form(settings, twilio, {**genuine(twilio, sid), "SmsSid": twilio_sid()}),
        ),
        Bad(
            "twilio: signed, no status",
            TWILIO,
            *signed_form(settings, twilio, {"AccountSid": twilio.account_sid, "MessageSid": sid}),
        ),
        # latin-1 "²": str.isdigit() says yes, int() says no (a 500 before)
        gateway(raw, **{"X-Gateway-Timestamp": "\xb2"}),
        gateway(raw, **{"X-Gateway-Timestamp": "17000000001700000000"}),
        gateway(raw, **{"X-Gateway-Nonce": "a" * 200}),
        gateway(raw, **{"X-Gateway-Signature": "not-hex"}),
        gateway(nested),  # signed, nested 5,000 deep (a 500 and a long traceback before)
        gateway(b"\xff\xfe not UTF-8"),
        gateway(b"not JSON"),
        gateway(b'{"reports": {"biz_id": "1"}}'),
        gateway(json.dumps({"reports": [{**report, "biz_id": "../../x"}]}).encode()),
        gateway(json.dumps({"reports": [{**report, "status": "LOST"}]}).encode()),
    ]


def test_every_malformed_request_is_a_400_with_one_short_log_line(
    api: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given the api, and a table of malformed requests (some of them properly signed)
    table = malformed_requests(api, fake_twilio)
    assert len(table) >= 15

    # When each is sent
    answers = {bad.name: request(api, bad.path, bad.body, bad.headers).status for bad in table}

    # Then each is a 400, counted as malformed …
    assert answers == {bad.name: 400 for bad in table}
    samples = scrape(api.api_metrics_port)
    assert metric(samples, "govnotify_callback_requests_total", outcome="malformed") == len(table)
    # … and logged in exactly one short line each, with no traceback anywhere
    lines = wait_for_log(pipeline, "request refused (400 malformed)", len(table))
    assert len(lines) == len(table), "\n".join(lines)
    assert all(len(line) < 300 and line.isprintable() for line in lines), lines
    log_text = (pipeline.log_dir / "api.log").read_text(errors="replace")
    assert "Traceback" not in log_text
    assert len(log_text.splitlines()) < len(table) + 10


def test_text_moved_between_twilio_parameters_is_refused_before_any_lookup(
    api: Settings, fake_twilio: FakeTwilio
) -> None:
    # Given a sent SMS and Twilio's genuine signature of its `delivered` callback
    sid = twilio_sid()
    notification_id = add_sent(api, provider="twilio", provider_ref=sid, recipient="+8613800138000")
    body, headers = signed_form(
        api, fake_twilio, genuine(fake_twilio, sid), shifted(fake_twilio, sid)
    )
    assert RequestValidator(fake_twilio.auth_token).validate(
        api.api_public_url + TWILIO, shifted(fake_twilio, sid), headers["X-Twilio-Signature"]
    ), "the shifted parameters keep the genuine signature valid"

    # When the parameters are posted with the text moved into the sid
    answer = request(api, TWILIO, body, headers)

    # Then it is refused as malformed, nothing is recorded under any reference …
    assert answer.status == 400
    with session(api) as s:
        assert s.execute(select(NotificationStatusEvent)).scalars().all() == []
    assert status_of(api, notification_id) == "sent"
    # … and the genuine callback still applies
    body, headers = signed_form(api, fake_twilio, genuine(fake_twilio, sid))
    assert request(api, TWILIO, body, headers).status == 204
    assert status_of(api, notification_id) == "delivered"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_huge_forged_form_is_refused_before_it_costs_cpu(
    api_settings: Settings, pipeline: Pipeline
) -> None:
    # Given the api, and a forged 256 KiB body of 34,000 form fields
    api = pipeline.api()
    body = b"&".join(b"%05d=" % i for i in range(34_000))
    assert 200 * 1024 < len(body) <= 256 * 1024
    headers = {"Content-Type": FORM, "X-Twilio-Signature": "c2lnbmF0dXJl"}
    request(api_settings, TWILIO, body, headers)  # warm up
    before = _cpu_seconds(api.pid)

    # When it is posted twenty times
    answers = {request(api_settings, TWILIO, body, headers).status for _ in range(20)}

    # Then each is refused as too large, at well under 155 ms of CPU each (the cost before)
    spent = _cpu_seconds(api.pid) - before
    assert spent / 20 < 0.02, f"{spent / 20 * 1000:.1f} ms of CPU per refused request"
    assert answers == {413}


def test_nothing_from_a_request_reaches_the_log_unescaped(
    api: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given requests carrying line breaks and terminal escapes wherever a value could be echoed
    forged = "\n2026-01-01 00:00:00,000 INFO api govnotify.api: forged\x1b[31m\u2028"
    sid = twilio_sid()
    with_code = {**genuine(fake_twilio, sid), "ErrorCode": forged}
    attempts = [
        (TWILIO, *signed_form(api, fake_twilio, genuine(fake_twilio, sid, forged))),
        (TWILIO, *signed_form(api, fake_twilio, with_code)),
        (TWILIO, *signed_form(api, fake_twilio, genuine(fake_twilio, forged))),
        (GATEWAY, *_gateway_report({"biz_id": forged, "status": "DELIVERED"})),
        (GATEWAY, *_gateway_report({"biz_id": "1^a", "status": forged})),
        (GATEWAY, *_gateway_report({"biz_id": "1^a", "status": "FAILED", "error_code": forged})),
    ]

    # When they are sent
    answers = [request(api, path, body, headers).status for path, body, headers in attempts]

    # Then each is refused, and every line of the api's log is a record of its own
    assert set(answers) == {400}
    wait_for_log(pipeline, "request refused", len(attempts))
    text = (pipeline.log_dir / "api.log").read_text(errors="replace")
    assert "\x1b" not in text and "\u2028" not in text
    record = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ api ")
    assert all(record.match(line) for line in text.splitlines()), text
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in text.splitlines())


def _gateway_report(report: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps({"reports": [report]}).encode()
    return raw, gateway_headers(raw)
