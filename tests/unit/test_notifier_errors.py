"""The error hierarchy and how Twilio's answers map onto it.

The mapping is exercised end to end: the real twilio client against the loopback FakeTwilio
(no other service), so the test also pins down how the client turns each answer into an
exception.
"""

from __future__ import annotations

import datetime as dt
import pickle
from collections.abc import Iterator

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
    RecipientUnsubscribedError,
    TransientDeliveryError,
    UnsupportedRecipientError,
)
from notifiers.http import retry_after_s
from notifiers.sms import OutboundMessage, Receipt, SMSNotifier
from notifiers.sms.twilio import TWILIO_ERROR_CODES, TwilioSMSNotifier, classify_twilio_error
from tests.fakes.twilio_server import FakeTwilio

TO = "+8613800138000"
BODY = "【长安政务】您的证件将于30天后到期。"


@pytest.mark.parametrize(
    ("cls", "parent", "reason"),
    [
        (InvalidRecipientError, PermanentDeliveryError, "invalid_number"),
        (RecipientUnsubscribedError, PermanentDeliveryError, "unsubscribed"),
        (UnsupportedRecipientError, PermanentDeliveryError, "landline_or_unsupported"),
        (MessageRejectedError, PermanentDeliveryError, "content_rejected"),
        (ProviderUnavailableError, TransientDeliveryError, "provider_unavailable"),
        (RateLimitedError, TransientDeliveryError, "rate_limited"),
        (DeliveryTimeoutError, TransientDeliveryError, "timeout"),
        (NotifierConfigError, DeliveryError, "misconfigured"),
        (PermanentDeliveryError, DeliveryError, "provider_rejected"),
        (TransientDeliveryError, DeliveryError, "provider_error"),
    ],
)
def test_hierarchy_and_reasons(cls: type[DeliveryError], parent: type, reason: str) -> None:
    # When
    error = cls("boom", code=21211, provider="twilio")

    # Then
    assert issubclass(cls, parent)
    assert error.reason == reason
    assert error.code == "21211"
    assert error.provider == "twilio"
    assert str(error) == "boom"


def test_config_error_is_neither_permanent_nor_transient() -> None:
    # Then: an operator fixes it; the recipient is not at fault and nothing is suppressed
    assert not issubclass(NotifierConfigError, PermanentDeliveryError | TransientDeliveryError)


def test_errors_survive_pickling() -> None:
    # Given
    error = RateLimitedError("slow down", code="20429", provider="twilio")

    # When
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object

    # Then
    assert type(copy) is RateLimitedError
    assert (copy.message, copy.reason, copy.code, copy.provider) == (
        "slow down",
        "rate_limited",
        "20429",
        "twilio",
    )


def test_a_rate_limit_keeps_its_scope_and_retry_after_through_pickling() -> None:
    # Given: the carrier's per-number limit, with the provider's advice
    error = RateLimitedError(
        "limit", retry_after=30.0, scope="recipient", code="isv.BUSINESS_LIMIT_CONTROL"
    )

    # When
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object

    # Then
    assert (copy.scope, copy.retry_after, copy.code) == (
        "recipient",
        30.0,
        "isv.BUSINESS_LIMIT_CONTROL",
    )
    # … and one raised without either is our account's limit, with no advice
    assert (RateLimitedError("429").scope, RateLimitedError("429").retry_after) == (
        "provider",
        None,
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        # a date already past: no wait, not a negative one
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("-3", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    header: str | None, expected: float | None
) -> None:
    # Given: the answer came at 07:28:00 GMT
    now = dt.datetime(2015, 10, 21, 7, 28, 0, tzinfo=dt.UTC)

    # When / Then
    assert retry_after_s(header, now=now) == expected


def test_reason_can_be_overridden_and_defaults_message() -> None:
    # When
    error = PermanentDeliveryError(reason="blocked")

    # Then
    assert error.reason == "blocked"
    assert str(error) == "blocked"
    assert error.code is None


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, 21211, InvalidRecipientError),
        (400, 21610, RecipientUnsubscribedError),
        (400, 21614, UnsupportedRecipientError),
        (400, 21612, UnsupportedRecipientError),
        (400, 21617, MessageRejectedError),
        (400, 21408, NotifierConfigError),
        (401, 20003, NotifierConfigError),
        (403, None, NotifierConfigError),
        (404, 20404, NotifierConfigError),
        (429, 20429, RateLimitedError),
        (429, None, RateLimitedError),
        (500, None, ProviderUnavailableError),
        (503, None, ProviderUnavailableError),
        (400, 99999, PermanentDeliveryError),
        (None, 30006, UnsupportedRecipientError),  # status callback ErrorCode
        (None, 30008, TransientDeliveryError),  # unknown callback code
    ],
)
def test_classify_table(status: int | None, code: int | None, expected: type) -> None:
    # Then
    assert classify_twilio_error(status, code) is expected


def test_every_table_entry_is_a_delivery_error() -> None:
    # Then
    assert all(issubclass(cls, DeliveryError) for cls in TWILIO_ERROR_CODES.values())


# ---- the real twilio client against FakeTwilio ------------------------------------------------
@pytest.fixture(scope="module")
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def twilio(fake: FakeTwilio) -> Iterator[TwilioSMSNotifier]:
    fake.clear()
    notifier = TwilioSMSNotifier(
        fake.account_sid, fake.auth_token, "+15005550006", api_base=fake.base_url, timeout=2.0
    )
    yield notifier
    notifier.close()


def _message(to: str = TO) -> OutboundMessage:
    return OutboundMessage(notification_id="n-1", to=to, body=BODY)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, 21211, InvalidRecipientError),
        (400, 21610, RecipientUnsubscribedError),
        (400, 21614, UnsupportedRecipientError),
        (400, 21612, UnsupportedRecipientError),
        (400, 21617, MessageRejectedError),
        (400, 12345, PermanentDeliveryError),
        (401, 20003, NotifierConfigError),
    ],
)
def test_fail_number_maps_to_error(
    fake: FakeTwilio, twilio: TwilioSMSNotifier, status: int, code: int, expected: type
) -> None:
    # Given
    fake.fail_number(TO, status, code)

    # When
    with pytest.raises(expected) as caught:
        twilio.send(_message())

    # Then
    assert type(caught.value) is expected
    assert caught.value.code == str(code)
    assert caught.value.provider == "twilio"
    assert fake.attempts == 1
    assert fake.messages == []


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, None, RateLimitedError),
        (429, 20429, RateLimitedError),
        (500, None, ProviderUnavailableError),
        (503, None, ProviderUnavailableError),
        (401, 20003, NotifierConfigError),
        (403, None, NotifierConfigError),
    ],
)
def test_fail_next_maps_to_error(
    fake: FakeTwilio, twilio: TwilioSMSNotifier, status: int, code: int | None, expected: type
) -> None:
    # Given
    fake.fail_next(1, status, code)

    # When
    with pytest.raises(expected):
        twilio.send(_message())
    receipt = twilio.send(_message())

    # Then: only the next one failed
    assert receipt.provider == "twilio"
    assert fake.attempts == 2
    assert len(fake.messages) == 1


def test_wrong_token_is_config_error_without_echoing_it(fake: FakeTwilio) -> None:
    # Given: a token of the right shape (32 hex digits) that is not the account's
    secret = "0badc0de" * 4
    notifier = TwilioSMSNotifier(fake.account_sid, secret, "+15005550006", api_base=fake.base_url)

    # When
    with pytest.raises(NotifierConfigError) as caught:
        notifier.send(_message())
    notifier.close()

    # Then
    assert caught.value.code == "20003"
    assert secret not in str(caught.value)


def test_phone_numbers_in_provider_messages_are_masked(
    fake: FakeTwilio, twilio: TwilioSMSNotifier
) -> None:
    # Given: Twilio quotes the number in some error messages
    fake.fail_next(1, 400, 21211)

    # When
    with pytest.raises(InvalidRecipientError) as caught:
        twilio.send(_message())

    # Then
    assert TO not in str(caught.value)


def test_slow_answer_is_ambiguous_timeout(fake: FakeTwilio) -> None:
    # Given: an answer slower than the notifier's timeout
    fake.clear()
    notifier = TwilioSMSNotifier(
        fake.account_sid, fake.auth_token, "+15005550006", api_base=fake.base_url, timeout=0.3
    )
    fake.delay_next(1, 5.0)

    # When
    with pytest.raises(DeliveryTimeoutError) as caught:
        notifier.send(_message())
    notifier.close()

    # Then: the fake did create it, which is why a timeout is ambiguous
    assert isinstance(caught.value, TransientDeliveryError)
    assert len(fake.wait_for(1, timeout=2)) == 1


def test_dropped_connection_is_ambiguous_timeout(
    fake: FakeTwilio, twilio: TwilioSMSNotifier
) -> None:
    # Given: the fake records the message, then closes the connection without an answer
    fake.drop_next(1)

    # When
    with pytest.raises(DeliveryTimeoutError):
        twilio.send(_message())

    # Then
    assert len(fake.messages) == 1


def test_stopped_server_is_provider_unavailable() -> None:
    # Given: a port nobody listens on any more
    with FakeTwilio() as server:
        base_url, sid, token = server.base_url, server.account_sid, server.auth_token
    notifier = TwilioSMSNotifier(sid, token, "+15005550006", api_base=base_url, timeout=2.0)

    # When
    with pytest.raises(ProviderUnavailableError) as caught:
        notifier.send(_message())
    notifier.close()

    # Then
    assert caught.value.reason == "provider_unavailable"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"account_sid": "XX" + "0" * 32}, "account_sid"),
        ({"account_sid": "AC123"}, "account_sid"),
        ({"auth_token": ""}, "auth_token"),
        ({"from_": " "}, "from_"),
        ({"api_base": "ftp://x"}, "api_base"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_config_validated_in_init(kwargs: dict[str, object], match: str) -> None:
    # Given
    args: dict[str, object] = {
        "account_sid": "AC" + "1" * 32,
        "auth_token": "5ec2e7" + "0" * 26,
        "from_": "+15005550006",
    }
    args.update(kwargs)

    # When / Then
    with pytest.raises(NotifierConfigError, match=match) as caught:
        TwilioSMSNotifier(**args)  # type: ignore[arg-type]
    assert "5ec2e7" + "0" * 26 not in str(caught.value)


class _Recorder(SMSNotifier):
    name = "recorder"
    channel = "sms"
    body_maxlen = 20

    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    def _send(self, message: OutboundMessage) -> Receipt:
        self.sent.append(message)
        return Receipt("recorder", "R1", "delivered", 1)


@pytest.mark.parametrize(
    ("to", "body", "expected"),
    [
        (TO, "", MessageRejectedError),
        (TO, "   ", MessageRejectedError),
        (TO, "中" * 21, MessageRejectedError),
        (TO, "详情见t.cn/abc", MessageRejectedError),
        ("13800138000", "您好", InvalidRecipientError),
        ("+86 138 0013 8000", "您好", InvalidRecipientError),
        (TO + "\n", "您好", InvalidRecipientError),
        ("+0123456789", "您好", InvalidRecipientError),
    ],
)
def test_send_validates_before_the_provider(to: str, body: str, expected: type) -> None:
    # Given
    notifier = _Recorder()

    # When
    with pytest.raises(expected) as caught:
        notifier.send(OutboundMessage("n-1", to, body))

    # Then
    assert notifier.sent == []
    assert caught.value.provider == "recorder"


def test_send_accepts_a_valid_message() -> None:
    # Given
    notifier = _Recorder()

    # When
    receipt = notifier.send(OutboundMessage("n-1", TO, "中" * 20))

    # Then
    assert receipt.provider_ref == "R1"
    assert len(notifier.sent) == 1
