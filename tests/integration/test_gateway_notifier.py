"""HttpGatewayNotifier against FakeSmsGateway over real HTTP: signatures, template mapping,
error classes, lookups and status reports.

Needs no broker or database: FakeSmsGateway is a loopback HTTP server started here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from infra.services import free_port
from notifiers.errors import (
    CallbackSignatureError,
    DeliveryError,
    DeliveryTimeoutError,
    InvalidRecipientError,
    LookupUnsupportedError,
    MessageRejectedError,
    NotifierConfigError,
    PermanentDeliveryError,
    ProviderUnavailableError,
    RateLimitedError,
    RecipientUnsubscribedError,
)
from notifiers.sms import OutboundMessage
from notifiers.sms.gateway import (
    HttpGatewayNotifier,
    classify_gateway_error,
    sign,
    signed_headers,
    verify_status_callback,
)
from notifiers.sms.text import count_segments
from tests.fakes.sms_gateway import FakeSmsGateway

pytestmark = pytest.mark.integration

TO = "+8613800138000"
RENEWAL_TEXT = (
    "您的${category_name}（证号${license_id}）将于${expires_on}到期，距今${days_left}天。"
)
PARAMS = {
    "category_name": "食品经营许可证",
    "license_id": "JY16101160012345",
    "expires_on": "2026年12月31日",
    "days_left": "30",
    "issuing_department": "长安区市场监督管理局",
}
BODY = "【长安政务】您的食品经营许可证（证号JY16101160012345）将于2026年12月31日到期，距今30天。"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSmsGateway]:
    with FakeSmsGateway(templates={"SMS_RENEWAL_01": RENEWAL_TEXT}, hold_s=10) as server:
        yield server


def make(fake: FakeSmsGateway, **overrides: Any) -> HttpGatewayNotifier:
    kwargs: dict[str, Any] = {
        "templates": {"renewal_reminder": "SMS_RENEWAL_01"},
        "generic_template": "SMS_GENERIC",
        "timeout": 2.0,
        **overrides,
    }
    return HttpGatewayNotifier(fake.base_url, fake.key_id, fake.secret, **kwargs)


@pytest.fixture
def gateway(fake: FakeSmsGateway) -> Iterator[HttpGatewayNotifier]:
    fake.clear()
    notifier = make(fake)
    yield notifier
    notifier.close()


def renewal(n: str = "n-1", to: str = TO) -> OutboundMessage:
    return OutboundMessage(
        n,
        to,
        BODY,
        flow="renewal",
        category="reminders",
        template="renewal_reminder",
        params=PARAMS,
    )


# ---- sending ---------------------------------------------------------------------------------
def test_a_templated_message_reaches_the_gateway_signed(
    fake: FakeSmsGateway, gateway: HttpGatewayNotifier
) -> None:
    # When
    receipt = gateway.send(renewal())

    # Then: the fake verified our signature and rendered the approved template
    [seen] = fake.wait_for(1)
    assert fake.bad_signatures == 0
    assert (seen["phone"], seen["sign_name"], seen["template_id"]) == (
        TO,
        "长安政务",
        "SMS_RENEWAL_01",
    )
    assert seen["params"] == PARAMS
    assert seen["out_id"] == "n-1"
    assert seen["content"] == BODY
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-gateway-key"] == fake.key_id
    assert abs(int(headers["x-gateway-timestamp"]) - time.time()) < 60
    assert len(headers["x-gateway-nonce"]) == 32
    assert headers["x-gateway-signature"] == headers["x-gateway-signature"].lower()
    assert len(headers["x-gateway-signature"]) == 64
    assert receipt.provider == "gateway"
    assert receipt.provider_ref == seen["biz_id"]
    assert receipt.status == "accepted"
    assert receipt.segments == count_segments(BODY)


@pytest.mark.parametrize(
    ("message", "template_id", "params"),
    [
        # a mapped template: by id, with the message's parameters
        (renewal(), "SMS_RENEWAL_01", PARAMS),
        # no template: the generic one, the body without our signature (the gateway adds it)
        (
            OutboundMessage("n-1", TO, "【长安政务】绿色通道提醒"),
            "SMS_GENERIC",
            {"content": "绿色通道提醒"},
        ),
        # a template the gateway has no id for: the generic one too
        (
            OutboundMessage(
                "n-1", TO, "【长安政务】请评价", template="survey_invitation", params={"a": "b"}
            ),
            "SMS_GENERIC",
            {"content": "请评价"},
        ),
    ],
)
def test_template_mapping(
    fake: FakeSmsGateway,
    gateway: HttpGatewayNotifier,
    message: OutboundMessage,
    template_id: str,
    params: dict[str, str],
) -> None:
    # When
    gateway.send(message)

    # Then
    [seen] = fake.wait_for(1)
    assert (seen["template_id"], seen["params"]) == (template_id, params)
    assert seen["content"].count("【长安政务】") == 1


def test_no_mapped_and_no_generic_template_is_a_config_error_before_any_request(
    fake: FakeSmsGateway,
) -> None:
    # Given
    fake.clear()
    notifier = make(fake, generic_template="")

    # When
    with pytest.raises(NotifierConfigError, match="no gateway template"):
        notifier.send(OutboundMessage("n-1", TO, "【长安政务】您好"))

    # Then
    assert fake.attempts == 0


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"url": "ftp://sms.example.cn"}, "url"),
        ({"key_id": " "}, "key_id"),
        ({"secret": ""}, "secret"),
        ({"sign_name": "【长安政务】"}, "sign_name"),
        ({"sign_name": "长" * 13}, "sign_name"),
        ({"templates": {"renewal_reminder": ""}}, "renewal_reminder"),
        ({"templates": {}, "generic_template": ""}, "nothing could be sent"),
        ({"timeout": 0}, "timeouts"),
    ],
)
def test_configuration_is_checked_at_construction(kwargs: dict[str, Any], problem: str) -> None:
    # Given
    args: dict[str, Any] = {
        "url": "https://sms.example.cn",
        "key_id": "k",
        "secret": "s",
        "generic_template": "SMS_GENERIC",
        **kwargs,
    }

    # When / Then
    with pytest.raises(NotifierConfigError, match=problem):
        HttpGatewayNotifier(**args)


# ---- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failure", "error", "code"),
    [
        (503, ProviderUnavailableError, "isp.SYSTEM_ERROR"),
        (500, ProviderUnavailableError, "isp.SYSTEM_ERROR"),
        (429, RateLimitedError, "Throttling"),
        ("isv.MOBILE_NUMBER_ILLEGAL", InvalidRecipientError, "isv.MOBILE_NUMBER_ILLEGAL"),
        ("isv.BLACK_KEY_CONTROL_LIMIT", RecipientUnsubscribedError, "isv.BLACK_KEY_CONTROL_LIMIT"),
        ("isv.BUSINESS_LIMIT_CONTROL", RateLimitedError, "isv.BUSINESS_LIMIT_CONTROL"),
        (
            "isv.TEMPLATE_MISSING_PARAMETERS",
            MessageRejectedError,
            "isv.TEMPLATE_MISSING_PARAMETERS",
        ),
        ("isv.SMS_TEMPLATE_ILLEGAL", NotifierConfigError, "isv.SMS_TEMPLATE_ILLEGAL"),
        ("isv.AMOUNT_NOT_ENOUGH", NotifierConfigError, "isv.AMOUNT_NOT_ENOUGH"),
        # unknown codes: the provider's own fault is an outage, a business refusal is final
        ("isp.SOMETHING_NEW", ProviderUnavailableError, "isp.SOMETHING_NEW"),
        ("isv.SOMETHING_NEW", PermanentDeliveryError, "isv.SOMETHING_NEW"),
    ],
)
def test_gateway_errors_become_typed_errors(
    fake: FakeSmsGateway,
    gateway: HttpGatewayNotifier,
    failure: int | str,
    error: type[DeliveryError],
    code: str,
) -> None:
    # Given
    fake.fail_next(1, failure)

    # When
    with pytest.raises(error) as caught:
        gateway.send(renewal())

    # Then
    assert type(caught.value) is error
    assert caught.value.code == code
    assert caught.value.provider == "gateway"
    assert fake.messages == []


@pytest.mark.parametrize(
    ("failure", "scope"),
    [
        # our account over its request rate: every worker backs off
        (429, "provider"),
        ("Throttling", "provider"),
        # the carrier's anti-harassment limits on one number: only that message waits
        ("isv.BUSINESS_LIMIT_CONTROL", "recipient"),
        ("isv.DAY_LIMIT_CONTROL", "recipient"),
    ],
)
def test_a_rate_limit_says_whose_limit_it_was(
    fake: FakeSmsGateway, gateway: HttpGatewayNotifier, failure: int | str, scope: str
) -> None:
    # Given
    fake.fail_next(1, failure)

    # When
    with pytest.raises(RateLimitedError) as caught:
        gateway.send(renewal())

    # Then
    assert caught.value.scope == scope
    assert caught.value.retry_after is None  # this gateway gives no Retry-After


def test_missing_template_parameters_are_refused_by_the_gateway(
    fake: FakeSmsGateway, gateway: HttpGatewayNotifier
) -> None:
    # Given: the approved template needs days_left, the message does not give it
    params = {k: v for k, v in PARAMS.items() if k != "days_left"}

    # When
    with pytest.raises(MessageRejectedError) as caught:
        gateway.send(OutboundMessage("n-1", TO, BODY, template="renewal_reminder", params=params))

    # Then
    assert caught.value.code == "isv.TEMPLATE_MISSING_PARAMETERS"


def test_a_wrong_secret_is_refused_as_our_misconfiguration(fake: FakeSmsGateway) -> None:
    # Given
    fake.clear()
    notifier = HttpGatewayNotifier(
        fake.base_url, fake.key_id, "not-the-secret", generic_template="SMS_GENERIC"
    )

    # When
    with pytest.raises(NotifierConfigError) as caught:
        notifier.send(OutboundMessage("n-1", TO, "【长安政务】您好"))

    # Then
    assert caught.value.code == "isv.SIGNATURE_INVALID"
    assert fake.bad_signatures == 1
    assert fake.messages == []


def test_a_read_timeout_is_ambiguous_and_the_gateway_did_take_it(fake: FakeSmsGateway) -> None:
    # Given: the gateway accepts, then holds its answer past our timeout
    fake.clear()
    fake.fail_next(1, "timeout")
    notifier = make(fake, timeout=0.5)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)

    # When
    started = time.monotonic()
    with pytest.raises(DeliveryTimeoutError):
        notifier.send(renewal("n-timeout"))
    waited = time.monotonic() - started

    # Then: we gave up in about our timeout, and a lookup by our id finds what it took
    assert waited < 5
    [seen] = fake.wait_for(1)
    assert notifier.lookup(TO, BODY, since, notification_id="n-timeout") == seen["biz_id"]


def test_connection_refused_means_nothing_was_sent() -> None:
    # Given: nothing listens on this port
    notifier = HttpGatewayNotifier(
        f"http://127.0.0.1:{free_port()}", "k", "s", generic_template="SMS_GENERIC"
    )

    # When / Then
    with pytest.raises(ProviderUnavailableError, match="cannot connect"):
        notifier.send(OutboundMessage("n-1", TO, "【长安政务】您好"))


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (200, "isv.MOBILE_NUMBER_ILLEGAL", InvalidRecipientError),
        (429, None, RateLimitedError),
        (401, None, NotifierConfigError),
        (403, "isv.WHATEVER", NotifierConfigError),
        (502, None, ProviderUnavailableError),
        (400, None, PermanentDeliveryError),
        (200, "isp.TIMEOUT", ProviderUnavailableError),
    ],
)
def test_classification_table(status: int, code: str | None, error: type[DeliveryError]) -> None:
    # Then
    assert classify_gateway_error(status, code) is error


def test_logs_never_hold_the_full_number(
    fake: FakeSmsGateway, gateway: HttpGatewayNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    # Given
    fake.fail_number(TO, "isv.MOBILE_NUMBER_ILLEGAL")

    # When
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(InvalidRecipientError):
            gateway.send(renewal())
        gateway.lookup(TO, BODY, dt.datetime.now(dt.UTC), notification_id="n-1")

    # Then
    ours = [r for r in caplog.records if r.name.startswith("notifiers")]
    assert ours
    assert all(TO[1:] not in r.getMessage() for r in ours)


def test_many_threads_share_one_notifier(
    fake: FakeSmsGateway, gateway: HttpGatewayNotifier
) -> None:
    # When: 8 threads × 25 sends
    messages = [renewal(f"n-{i}") for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        receipts = list(pool.map(gateway.send, messages))

    # Then
    assert len({r.provider_ref for r in receipts}) == 200
    assert {m["out_id"] for m in fake.wait_for(200)} == {m.notification_id for m in messages}
    assert fake.bad_signatures == 0


# ---- asking afterwards ---------------------------------------------------------------------------
def test_lookup_by_notification_id(fake: FakeSmsGateway, gateway: HttpGatewayNotifier) -> None:
    # Given
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    sent = gateway.send(renewal("n-1"))
    gateway.send(renewal("n-2"))

    # When / Then: exact by our id, and "never taken" is a certain None
    assert gateway.lookup(TO, BODY, since, notification_id="n-1") == sent.provider_ref
    assert gateway.lookup(TO, BODY, since, notification_id="n-9") is None
    assert gateway.lookup("+8613900000000", BODY, since, notification_id="n-1") is None


def test_lookup_by_body_only_when_it_can_be_sure(
    fake: FakeSmsGateway, gateway: HttpGatewayNotifier
) -> None:
    # Given: one generic-template message and one templated one
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    plain = gateway.send(OutboundMessage("n-1", TO, "【长安政务】您好"))
    gateway.send(renewal("n-2"))

    # When / Then: the generic one is found by its text
    assert gateway.lookup(TO, "【长安政务】您好", since) == plain.provider_ref
    # a body that matches no record, while records exist: not provably unsent
    with pytest.raises(LookupUnsupportedError):
        gateway.lookup(TO, "【长安政务】别的", since)
    # no records at all for the number: certainly not sent
    assert gateway.lookup("+8613900000000", "【长安政务】别的", since) is None


def test_lookup_respects_since_and_refuses_naive_times(
    fake: FakeSmsGateway, gateway: HttpGatewayNotifier
) -> None:
    # Given
    gateway.send(renewal("n-1"))

    # When / Then
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    assert gateway.lookup(TO, BODY, later, notification_id="n-1") is None
    with pytest.raises(ValueError, match="timezone-aware"):
        gateway.lookup(TO, BODY, dt.datetime(2026, 1, 1), notification_id="n-1")


def test_fetch_status(fake: FakeSmsGateway, gateway: HttpGatewayNotifier) -> None:
    # Given
    receipt = gateway.send(renewal())

    # When / Then
    assert gateway.fetch_status(receipt.provider_ref) == "SENT"
    fake.set_status(receipt.provider_ref, "DELIVERED")
    assert gateway.fetch_status(receipt.provider_ref) == "DELIVERED"
    fake.set_status(receipt.provider_ref, "FAILED", "MK:0005")
    failed = gateway.fetch_status(receipt.provider_ref)
    assert (failed, getattr(failed, "error_code", None)) == ("FAILED", "MK:0005")
    # a reference the gateway never gave: no such message
    assert gateway.fetch_status("0^unknown") is None


# ---- status reports ------------------------------------------------------------------------------
SECRET = "gw-test-secret-0123456789abcdef"
NOW = 1_800_000_000
REPORT = {
    "reports": [
        {
            "biz_id": "1^a",
            "status": "DELIVERED",
            "error_code": None,
            "reported_at": "2026-11-26T10:00:00+08:00",
        },
        {"biz_id": "1^b", "status": "FAILED", "error_code": "MK:0001"},
    ]
}


def signed(body: bytes, *, secret: str = SECRET, timestamp: int = NOW) -> dict[str, str]:
    return signed_headers("gw-test-key", secret, body, timestamp=timestamp, nonce="n" * 32)


RAW = json.dumps(REPORT).encode()


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({}, RAW, "unsigned"),
        (signed(RAW, secret="forged"), RAW, "forged"),
        # signed, then altered in transit
        (signed(RAW), RAW.replace(b"DELIVERED", b"FAILED\x20\x20\x20"), "forged"),
        # a valid signature from long ago: a replay
        (signed(RAW, timestamp=NOW - 301), RAW, "forged"),
        (signed(RAW, timestamp=NOW + 301), RAW, "forged"),
        ({**signed(RAW), "X-Gateway-Timestamp": "soon"}, RAW, "forged"),
        (signed(b"not json"), b"not json", "malformed"),
        (signed(b'{"reports": {}}'), b'{"reports": {}}', "malformed"),
        (
            signed(b'{"reports": [{"biz_id": "1", "status": "LOST"}]}'),
            b'{"reports": [{"biz_id": "1", "status": "LOST"}]}',
            "malformed",
        ),
        (
            signed(b'{"reports": [{"status": "SENT"}]}'),
            b'{"reports": [{"status": "SENT"}]}',
            "malformed",
        ),
        (
            signed(b'{"reports": [{"biz_id": "1", "status": "SENT", "reported_at": "x"}]}'),
            b'{"reports": [{"biz_id": "1", "status": "SENT", "reported_at": "x"}]}',
            "malformed",
        ),
    ],
)
def test_status_reports_are_refused_when_anything_is_wrong(
    headers: dict[str, str], body: bytes, reason: str
) -> None:
    # When
    with pytest.raises(CallbackSignatureError) as caught:
        verify_status_callback(SECRET, headers, body, now=NOW)

    # Then
    assert caught.value.reason == reason


def test_a_good_status_report_is_parsed() -> None:
    # Given: header names in any case, as WSGI and http.server give them
    headers = {k.lower(): v for k, v in signed(RAW, timestamp=NOW - 299).items()}

    # When
    reports = verify_status_callback(
        SECRET,
        headers,
        RAW,
        now=dt.datetime.fromtimestamp(NOW, dt.UTC),
        key_id="gw-test-key",
    )

    # Then
    assert reports == [
        {
            "biz_id": "1^a",
            "status": "DELIVERED",
            "error_code": None,
            "reported_at": "2026-11-26T10:00:00+08:00",
        },
        {"biz_id": "1^b", "status": "FAILED", "error_code": "MK:0001", "reported_at": None},
    ]
    with pytest.raises(CallbackSignatureError):
        verify_status_callback(SECRET, headers, RAW, now=NOW, key_id="another-key")


def test_the_fake_pushes_reports_that_verify(
    fake: FakeSmsGateway, gateway: HttpGatewayNotifier
) -> None:
    # Given: our receiving side, as a tiny endpoint calling verify_status_callback
    outcomes: list[Any] = []

    class Endpoint(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                outcomes.append(verify_status_callback(fake.secret, self.headers, raw))
                self.send_response(204)
            except CallbackSignatureError as exc:
                outcomes.append(exc.reason)
                self.send_response(403)
            self.end_headers()

    receipt = gateway.send(renewal())
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(server.serve_forever, 0.05)
        url = f"http://127.0.0.1:{server.server_address[1]}/callbacks/gateway/status"

        # When
        report = fake.report(receipt.provider_ref, "DELIVERED")
        good = fake.send_status_report(url, [report])
        forged = fake.send_status_report(url, [report], secret="guessed")
        unsigned = fake.send_status_report(url, [report], sign=False)
        stale = fake.send_status_report(url, [report], timestamp=int(time.time()) - 3600)
        server.shutdown()
    server.server_close()

    # Then
    assert (good, forged, unsigned, stale) == (204, 403, 403, 403)
    assert outcomes[0][0]["biz_id"] == receipt.provider_ref
    assert outcomes[0][0]["status"] == "DELIVERED"
    assert outcomes[1:] == ["forged", "unsigned", "forged"]
    assert gateway.fetch_status(receipt.provider_ref) == "DELIVERED"


def test_sign_is_hmac_sha256_over_timestamp_nonce_and_body() -> None:
    # Then: the agreed construction, pinned (the api and the real gateway rely on it)
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"1700000000\nabc\n{}", hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", "abc", b"{}") == expected
