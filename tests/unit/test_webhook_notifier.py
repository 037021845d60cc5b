"""The staff webhook notifier against the loopback FakeWebhook (no other service).

Each body format is pinned down exactly, signatures are verified the way a receiver would, and
every kind of answer is mapped onto the typed errors of notifiers.errors.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import socket
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

from notifiers.errors import (
    DeliveryError,
    DeliveryTimeoutError,
    InvalidRecipientError,
    MessageRejectedError,
    NotifierConfigError,
    PermanentDeliveryError,
    ProviderUnavailableError,
    RateLimitedError,
)
from notifiers.staff import StaffMessage
from notifiers.staff.webhook import ROBOT_LIMIT_WINDOW_S, WebhookNotifier, WebhookReceipt
from tests.fakes.webhook_server import FakeWebhook

STAFF_MOBILE = "+8613800130001"
SUPERVISOR_MOBILE = "+8613800130002"
ROBOT_KEY = "0f1e2d3c-robot-key-4b5a69788796"
SECRET = "SECtest-secret-0123456789"


def _message(**overrides: Any) -> StaffMessage:
    values: dict[str, Any] = {
        "message_id": "gc-7f3a9c",
        "kind": "green_channel_alert",
        "title": "绿色通道：高龄老人到厅",
        "text": "申请人（电话138****8000）已在长安区政务服务中心取号，请立即接待。",
        "data": {"case_id": "CASE-1", "service_point_id": "SC-CHANGAN", "due": "2025-03-03T10:10"},
        "mention_mobiles": (STAFF_MOBILE, SUPERVISOR_MOBILE),
    }
    values.update(overrides)
    return StaffMessage(**values)


@pytest.fixture
def fake() -> Iterator[FakeWebhook]:
    with FakeWebhook() as server:
        yield server


# ---- body formats ----------------------------------------------------------------------------
def test_json_format_sends_our_body_with_id_header(fake: FakeWebhook) -> None:
    # Given
    notifier = WebhookNotifier(fake.url("/hooks/portal"), fmt="json")
    message = _message()

    # When
    receipt = notifier.send(message)

    # Then
    (request,) = fake.wait_for(1)
    assert receipt == WebhookReceipt(status_code=200, provider_ref=None)
    assert request.route == "/hooks/portal"
    assert request.header("X-Govnotify-Id") == "gc-7f3a9c"
    assert request.header("Content-Type") == "application/json; charset=utf-8"
    assert request.header("X-Govnotify-Signature") is None
    sent_at = request.body.pop("sent_at")
    assert dt.datetime.fromisoformat(sent_at).tzinfo is not None
    assert request.body == {
        "id": "gc-7f3a9c",
        "kind": "green_channel_alert",
        "title": "绿色通道：高龄老人到厅",
        "text": "申请人（电话138****8000）已在长安区政务服务中心取号，请立即接待。",
        "data": {"case_id": "CASE-1", "service_point_id": "SC-CHANGAN", "due": "2025-03-03T10:10"},
    }


def test_json_format_signature_verifies_with_hmac(fake: FakeWebhook) -> None:
    # Given
    notifier = WebhookNotifier(fake.url("/hooks/portal"), fmt="json", secret=SECRET)

    # When
    notifier.send(_message())

    # Then: the receiver recomputes the HMAC over the exact bytes it got
    (request,) = fake.wait_for(1)
    expected = hmac.new(SECRET.encode(), request.raw, hashlib.sha256).hexdigest()
    assert request.header("X-Govnotify-Signature") == f"sha256={expected}"


def test_wecom_format_body_and_national_mentions(fake: FakeWebhook) -> None:
    # Given
    notifier = WebhookNotifier(fake.url(f"/cgi-bin/webhook/send?key={ROBOT_KEY}"), fmt="wecom")

    # When
    receipt = notifier.send(_message())

    # Then
    (request,) = fake.wait_for(1)
    assert receipt == WebhookReceipt(status_code=200, provider_ref=None)
    assert request.query == {"key": ROBOT_KEY}
    assert request.header("X-Govnotify-Id") == "gc-7f3a9c"
    assert request.body == {
        "msgtype": "text",
        "text": {
            "content": "绿色通道：高龄老人到厅\n"
            "申请人（电话138****8000）已在长安区政务服务中心取号，请立即接待。",
            "mentioned_mobile_list": ["13800130001", "13800130002"],
        },
    }


def test_dingtalk_format_body_and_national_mentions(fake: FakeWebhook) -> None:
    # Given: no secret, so no signing parameters
    notifier = WebhookNotifier(fake.url("/robot/send?access_token=tok"), fmt="dingtalk")

    # When
    notifier.send(_message())

    # Then
    (request,) = fake.wait_for(1)
    assert request.query == {"access_token": "tok"}
    assert request.body == {
        "msgtype": "text",
        "text": {
            "content": "绿色通道：高龄老人到厅\n"
            "申请人（电话138****8000）已在长安区政务服务中心取号，请立即接待。"
        },
        "at": {"atMobiles": ["13800130001", "13800130002"], "isAtAll": False},
    }


@pytest.mark.parametrize("path", ["/robot/send?access_token=tok", "/robot/send"])
def test_dingtalk_signing_parameters_verify(fake: FakeWebhook, path: str) -> None:
    # Given
    notifier = WebhookNotifier(fake.url(path), fmt="dingtalk", secret=SECRET)
    before_ms = int(time.time() * 1000)

    # When
    notifier.send(_message())

    # Then: DingTalk's check, HMAC-SHA256 over "<timestamp>\n<secret>", base64
    (request,) = fake.wait_for(1)
    timestamp = request.query["timestamp"]
    assert before_ms <= int(timestamp) <= int(time.time() * 1000)
    mac = hmac.new(SECRET.encode(), f"{timestamp}\n{SECRET}".encode(), hashlib.sha256).digest()
    assert request.query["sign"] == base64.b64encode(mac).decode()
    assert request.route == "/robot/send"
    if "access_token" in path:
        assert request.query["access_token"] == "tok"


# ---- answers and transport failures ----------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "script", "expected", "code"),
    [
        ("json", ("status", 503), ProviderUnavailableError, "503"),
        ("json", ("status", 500), ProviderUnavailableError, "500"),
        ("json", ("status", 429), RateLimitedError, "429"),
        ("json", ("status", 400), PermanentDeliveryError, "400"),
        ("wecom", ("status", 404), PermanentDeliveryError, "404"),
        ("wecom", ("errcode", 45009), RateLimitedError, "45009"),
        ("wecom", ("errcode", 93000), PermanentDeliveryError, "93000"),
        ("wecom", ("errcode", -1), ProviderUnavailableError, "-1"),
        ("dingtalk", ("errcode", 130101), RateLimitedError, "130101"),
        ("dingtalk", ("errcode", 310000), PermanentDeliveryError, "310000"),
    ],
)
def test_answers_map_to_typed_errors(
    fake: FakeWebhook,
    fmt: str,
    script: tuple[str, int],
    expected: type[DeliveryError],
    code: str,
) -> None:
    # Given
    notifier = WebhookNotifier(fake.url("/hook?key=k"), fmt=fmt)  # type: ignore[arg-type]
    kind, value = script
    if kind == "status":
        fake.fail_next(1, value)
    else:
        fake.errcode_next(1, value)

    # When
    with pytest.raises(DeliveryError) as caught:
        notifier.send(_message())

    # Then
    assert type(caught.value) is expected
    assert caught.value.code == code
    assert caught.value.provider == "webhook"
    assert len(fake.wait_for(1)) == 1


@pytest.mark.parametrize(("fmt", "errcode"), [("wecom", 45009), ("dingtalk", 130101)])
def test_a_robot_over_its_limit_asks_for_its_minute_to_pass(
    fake: FakeWebhook, fmt: str, errcode: int
) -> None:
    # Given: a robot that has taken its 20 messages this minute
    notifier = WebhookNotifier(fake.url("/hook?key=k"), fmt=fmt)  # type: ignore[arg-type]
    fake.errcode_next(1, errcode)

    # When
    with pytest.raises(RateLimitedError) as caught:
        notifier.send(_message())

    # Then: the robot's own limit, over a minute
    assert (caught.value.scope, caught.value.retry_after) == ("provider", ROBOT_LIMIT_WINDOW_S)


def test_no_answer_within_timeout_is_a_delivery_timeout(fake: FakeWebhook) -> None:
    # Given
    notifier = WebhookNotifier(fake.url("/hook"), fmt="json", timeout=0.3)
    fake.delay_next(1, 3.0)

    # When
    with pytest.raises(DeliveryError) as caught:
        notifier.send(_message())

    # Then: the request arrived, so the outcome is ambiguous, not "unavailable"
    assert type(caught.value) is DeliveryTimeoutError
    assert len(fake.wait_for(1)) == 1


def test_closed_port_is_provider_unavailable() -> None:
    # Given: a port that was free a moment ago and has no listener now
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    notifier = WebhookNotifier(f"http://127.0.0.1:{port}/hook", fmt="wecom", timeout=2)

    # When
    with pytest.raises(DeliveryError) as caught:
        notifier.send(_message())

    # Then
    assert type(caught.value) is ProviderUnavailableError


# ---- refused before any request --------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "title", "text", "accepted"),
    [
        # WeCom counts UTF-8 bytes of title + "\n" + text: "告警" is 6 bytes, "\n" 1.
        ("wecom", "告警", "a" * 2041, True),
        ("wecom", "告警", "a" * 2042, False),
        ("wecom", "告警", "字" * 681, False),  # 681 characters, but 2050 bytes
        ("dingtalk", "告警", "字" * (20000 - 3), True),
        ("dingtalk", "告警", "字" * (20000 - 2), False),
        ("json", "告警", "字" * (4096 - 2), True),
        ("json", "告警", "字" * (4096 - 1), False),
    ],
)
def test_content_limits_per_format(
    fake: FakeWebhook, fmt: str, title: str, text: str, accepted: bool
) -> None:
    # Given
    notifier = WebhookNotifier(fake.url("/hook"), fmt=fmt)  # type: ignore[arg-type]
    message = _message(title=title, text=text)

    # When / Then
    if accepted:
        notifier.send(message)
        assert len(fake.wait_for(1)) == 1
    else:
        with pytest.raises(MessageRejectedError, match="at most"):
            notifier.send(message)
        assert fake.requests == []


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"text": "   "}, MessageRejectedError, "empty"),
        ({"data": {"when": dt.date(2025, 3, 3)}}, MessageRejectedError, "JSON"),
        ({"mention_mobiles": ("13800130001",)}, InvalidRecipientError, "E.164"),
        ({"mention_mobiles": ("+14155550100",)}, InvalidRecipientError, "mainland"),
    ],
)
def test_bad_messages_fail_before_any_request(
    fake: FakeWebhook, overrides: dict[str, Any], error: type[DeliveryError], match: str
) -> None:
    # Given
    notifier = WebhookNotifier(fake.url("/hook"), fmt="wecom")

    # When / Then
    with pytest.raises(error, match=match):
        notifier.send(_message(**overrides))
    assert fake.requests == []


@pytest.mark.parametrize(
    ("overrides", "shown", "hidden"),
    [
        ({"text": "申请人电话13800138000，请接待"}, "138****8000", "13800138000"),
        ({"title": "申请人 138 0013 8000"}, "138****8000", "0013"),
        ({"text": "身份证610116199001011234"}, "610116********1234", "19900101"),
        # an 18-digit case id looks like an ID number: masked, the alert still goes out
        ({"text": "办件610116202612060001到达"}, "610116********0001", "20261206"),
    ],
)
def test_personal_numbers_in_an_alert_are_masked_and_the_alert_is_sent(
    fake: FakeWebhook, overrides: dict[str, Any], shown: str, hidden: str
) -> None:
    # Given: an alert whose text or title holds something shaped like a mobile or ID number
    notifier = WebhookNotifier(fake.url("/hook"), fmt="json")

    # When
    notifier.send(_message(**overrides))

    # Then: delivered, with the number masked in what the staff see
    [request] = fake.wait_for(1)
    body = json.dumps(request.body, ensure_ascii=False)
    assert shown in body
    assert hidden not in body


def test_unknown_message_kind_is_refused() -> None:
    # When / Then
    with pytest.raises(ValueError, match="unknown staff message kind"):
        _message(kind="green_channel")


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        (f"ftp://example.com/hook?key={ROBOT_KEY}", {}, "http"),
        ("qyapi.weixin.qq.com/cgi-bin/webhook/send", {}, "http"),
        ("http:///no-host", {}, "host"),
        ("http://127.0.0.1/hook", {"fmt": "slack"}, "fmt must be one of"),
        ("http://127.0.0.1/hook", {"fmt": "wecom", "secret": "s"}, "WeCom"),
        ("http://127.0.0.1/hook", {"secret": ""}, "secret is empty"),
        ("http://127.0.0.1/hook", {"timeout": 0}, "timeout"),
    ],
)
def test_bad_configuration_is_a_config_error(url: str, kwargs: dict[str, Any], match: str) -> None:
    # When / Then
    with pytest.raises(NotifierConfigError, match=match) as caught:
        WebhookNotifier(url, **kwargs)
    assert ROBOT_KEY not in str(caught.value)


# ---- nothing secret or personal in logs ------------------------------------------------------
def test_logs_and_errors_hold_neither_url_nor_phone_number(
    fake: FakeWebhook, caplog: pytest.LogCaptureFixture
) -> None:
    # Given: every logger at DEBUG, urllib3's request lines included
    caplog.set_level(logging.DEBUG)
    path = f"/cgi-bin/webhook/send?key={ROBOT_KEY}"
    notifier = WebhookNotifier(fake.url(path), fmt="wecom")
    fake.fail_next(1, 503)

    # When: one refused and one accepted send
    with pytest.raises(ProviderUnavailableError) as caught:
        notifier.send(_message())
    notifier.send(_message())
    notifier.close()

    # Then
    fake.wait_for(2)
    logged = caplog.text + "".join(traceback.format_exception(caught.value))
    assert ROBOT_KEY not in logged
    assert "/cgi-bin/webhook/send" not in logged
    assert "13800130001" not in logged
    assert "13800130002" not in logged
    assert f"{fake.base_url}" in logged  # scheme and host only
    assert "gc-7f3a9c" in logged


def test_connection_errors_do_not_chain_the_url() -> None:
    # Given
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    notifier = WebhookNotifier(f"http://127.0.0.1:{port}/hook?key={ROBOT_KEY}", fmt="wecom")

    # When
    with pytest.raises(ProviderUnavailableError) as caught:
        notifier.send(_message())

    # Then: requests' own message names the URL; it must not reach a traceback
    assert ROBOT_KEY not in "".join(traceback.format_exception(caught.value))
