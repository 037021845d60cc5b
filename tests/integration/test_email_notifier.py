"""The e-mail notifier against a real SMTP server implementation (aiosmtpd, on loopback).

What a department head's mail client would decode is pinned down exactly; every kind of server
answer is mapped onto the typed errors of notifiers.errors; the transport security follows the
URL; and neither the password, the address nor the message text ever reaches an error or a log
line. No other service is needed.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
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
    TransientDeliveryError,
)
from notifiers.staff import StaffMessage
from notifiers.staff.email import EmailNotifier, classify_smtp_reply, parse_address
from tests.fakes.smtp_server import (
    FakeSmtp,
    non_loopback_address,
    silent_listener,
    tls_contexts,
)

HEAD = "market-head@changan.gov.cn"
SENDER = "长安区政务服务中心 <govnotify@changan.gov.cn>"
USER = "govnotify-mailer"
PASSWORD = "pw-smtp-test-9f8e7d6c5b4a"
TITLE = "续证提醒电话清单（1/2）"
TEXT = (
    "范秀英：以下2户许可证即将到期，请安排电话提醒办理续证（11月26日）。\n"
    "1. 食品经营许可证LIC-MKT-1｜王*伟 138****8001｜11月29日到期\n"
    "2. 食品经营许可证LIC-MKT-2｜李*明 138****8002｜11月30日到期"
)
DATA = {
    "department": "市场监督管理局",
    "day": "2026-11-26",
    "entries": [
        {"entry_id": "e1", "license_id": "LIC-MKT-1"},
        {"entry_id": "e2", "license_id": "LIC-MKT-2"},
    ],
    "count": 2,
}


def _message(**overrides: Any) -> StaffMessage:
    values: dict[str, Any] = {
        "message_id": "call-list-2026-11-26-3f9a1c-1",
        "kind": "call_list",
        "title": TITLE,
        "text": TEXT,
        "data": DATA,
        "mention_mobiles": ("+8613800130059",),
    }
    values.update(overrides)
    return StaffMessage(**values)


def _notifier(url: str, **kwargs: Any) -> EmailNotifier:
    kwargs.setdefault("to", HEAD)
    return EmailNotifier(url, SENDER, **kwargs)


@pytest.fixture
def fake() -> Iterator[FakeSmtp]:
    with FakeSmtp() as server:
        yield server


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, str | None]:
    """``(server context, client context, a non-loopback address of this host or None)``."""
    remote = non_loopback_address()
    hosts = ["127.0.0.1", "localhost"] + ([remote] if remote else [])
    try:
        server, client = tls_contexts(tmp_path_factory.mktemp("smtp-tls"), hosts)
    except (OSError, RuntimeError) as exc:  # no openssl command
        pytest.skip(f"cannot make a test certificate: {exc}")
    return server, client, remote


def _closed_port() -> int:
    with silent_listener() as port:
        pass
    return port


# ---- what arrives ----------------------------------------------------------------------------
def test_chinese_subject_body_and_data_arrive_intact(fake: FakeSmtp) -> None:
    # Given
    notifier = _notifier(fake.url())

    # When
    receipt = notifier.send(_message())

    # Then the envelope is the sender and the one head, nobody else
    (got,) = fake.wait_for(1)
    assert got.mail_from == "govnotify@changan.gov.cn"
    assert got.rcpt_tos == (HEAD,)
    # and a mail client decodes exactly what was sent
    assert got.subject == TITLE
    assert str(got.message["From"]) == SENDER
    assert str(got.message["To"]) == HEAD
    assert got.text == (
        f"{TEXT}\n\n"
        "department: 市场监督管理局\n"
        "day: 2026-11-26\n"
        'entries: [{"entry_id": "e1", "license_id": "LIC-MKT-1"}, '
        '{"entry_id": "e2", "license_id": "LIC-MKT-2"}]\n'
        "count: 2\n"
    )
    assert got.message.get_content_type() == "text/plain"
    assert got.message.get_content_charset() == "utf-8"
    # with the ids a mail system de-duplicates a retry by
    assert got.header("Message-ID") == "<call-list-2026-11-26-3f9a1c-1@govnotify>"
    assert got.header("X-Govnotify-Id") == "call-list-2026-11-26-3f9a1c-1"
    assert got.header("X-Govnotify-Kind") == "call_list"
    assert got.header("Auto-Submitted") == "auto-generated"
    assert got.header("Date")
    # the raw message is 7-bit clean (base64 body, encoded-word subject): no 8BITMIME needed
    assert got.raw.isascii()
    assert receipt.message_id == "<call-list-2026-11-26-3f9a1c-1@govnotify>"
    assert (receipt.reply_code, receipt.provider_ref) == (250, "FAKE0001")
    # on loopback the session is plain SMTP
    assert not got.tls


def test_personal_numbers_are_masked_and_the_mail_still_goes(fake: FakeSmtp) -> None:
    # Given a message whose subject and text hold a mobile and an ID-shaped number
    notifier = _notifier(fake.url())
    message = _message(
        title="回访 138 0013 8001", text="请致电13800138001，身份证610116199001011234"
    )

    # When
    notifier.send(message)

    # Then it arrives, masked
    (got,) = fake.wait_for(1)
    assert "138****8001" in got.subject
    assert "138****8001" in got.text and "610116********1234" in got.text
    assert "13800138001" not in got.text + got.subject
    assert "19900101" not in got.text


def test_a_retry_carries_the_same_message_id(fake: FakeSmtp) -> None:
    # Given
    notifier = _notifier(fake.url())

    # When the same message is sent twice (a retry after an ambiguous timeout)
    notifier.send(_message())
    notifier.send(_message())

    # Then a mail system sees one Message-ID
    first, second = fake.wait_for(2)
    assert first.header("Message-ID") == second.header("Message-ID")


def test_the_server_credentials_are_used(tmp_path: Path) -> None:
    # Given a server that requires AUTH
    with FakeSmtp(credentials=(USER, PASSWORD)) as fake:
        # When
        _notifier(fake.url(user=USER, password=PASSWORD)).send(_message())

        # Then
        (got,) = fake.wait_for(1)
        assert got.login == USER


def test_many_threads_share_one_notifier(fake: FakeSmtp) -> None:
    # Given one notifier (one connection per send) and eight worker threads
    notifier = _notifier(fake.url())
    errors: list[BaseException] = []

    def send(k: int) -> None:
        try:
            notifier.send(_message(message_id=f"gc-{k}", kind="green_channel_alert"))
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    # When
    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then
    assert errors == []
    ids = sorted(m.header("X-Govnotify-Id") or "" for m in fake.wait_for(8))
    assert ids == sorted(f"gc-{k}" for k in range(8))


# ---- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("at", "code", "text", "expected", "reason"),
    [
        # the address does not exist: permanent, the recipient's fault
        ("rcpt", 550, None, InvalidRecipientError, "invalid_address"),
        ("rcpt", 553, None, InvalidRecipientError, "invalid_address"),
        ("rcpt", 551, None, InvalidRecipientError, "invalid_address"),
        ("rcpt", 550, "No such user here", InvalidRecipientError, "invalid_address"),
        # the mailbox exists but takes nothing: permanent, not an invalid address
        ("rcpt", 552, "5.2.2 Mailbox full", PermanentDeliveryError, "provider_rejected"),
        ("rcpt", 550, "5.2.1 Mailbox disabled", PermanentDeliveryError, "provider_rejected"),
        # relaying denied: our server does not accept us as a sender
        ("rcpt", 554, "5.7.1 Relay access denied", NotifierConfigError, "misconfigured"),
        # try later
        ("rcpt", 451, None, ProviderUnavailableError, "provider_unavailable"),
        ("rcpt", 450, None, ProviderUnavailableError, "provider_unavailable"),
        ("rcpt", 421, None, ProviderUnavailableError, "provider_unavailable"),
        ("rcpt", 452, None, RateLimitedError, "rate_limited"),
        ("mail", 421, None, ProviderUnavailableError, "provider_unavailable"),
        ("data", 451, None, ProviderUnavailableError, "provider_unavailable"),
        # the content is refused
        ("data", 554, None, MessageRejectedError, "content_rejected"),
        ("data", 550, "5.7.1 Message rejected as spam", MessageRejectedError, "content_rejected"),
        ("data", 552, None, MessageRejectedError, "content_rejected"),
        ("mail", 552, None, MessageRejectedError, "content_rejected"),
        # our sender address is refused: GOVNOTIFY_SMTP_FROM needs an operator
        ("mail", 550, "5.7.1 Sender address rejected: not owned by user", NotifierConfigError,
         "misconfigured"),
        ("mail", 553, None, NotifierConfigError, "misconfigured"),
        ("mail", 530, None, NotifierConfigError, "misconfigured"),
    ],
)  # fmt: skip
def test_server_refusals_are_classified(
    fake: FakeSmtp,
    caplog: pytest.LogCaptureFixture,
    at: Any,
    code: int,
    text: str | None,
    expected: type[DeliveryError],
    reason: str,
) -> None:
    # Given a server that refuses the next transaction at this stage
    fake.fail_next(1, code, at=at, text=text)
    caplog.set_level(logging.DEBUG)

    # When
    with pytest.raises(DeliveryError) as caught:
        _notifier(fake.url()).send(_message())

    # Then
    error = caught.value
    assert type(error) is expected
    assert (error.reason, error.code, error.provider) == (reason, str(code), "email")
    assert isinstance(error, PermanentDeliveryError | TransientDeliveryError | NotifierConfigError)
    assert str(code) in str(error)
    assert [(r.stage, r.code) for r in fake.refusals] == [(at, code)]
    assert fake.messages == []
    # The server's text echoed the address: neither the error nor a log line repeats it
    # nor a traceback of it (no smtplib exception, holding the address, is chained)
    _assert_nothing_private(
        str(error), repr(error), caplog.text, "".join(traceback.format_exception(error))
    )


@pytest.mark.parametrize(
    ("stage", "code", "reply", "expected"),
    [
        ("connect", 554, b"5.7.1 No SMTP service for you", NotifierConfigError),
        ("connect", 421, b"4.3.2 Too busy", ProviderUnavailableError),
        ("ehlo", 550, b"", NotifierConfigError),
        ("starttls", 454, b"4.7.0 TLS not available", ProviderUnavailableError),
        ("starttls", 501, b"", NotifierConfigError),
        ("auth", 535, b"5.7.8 Authentication credentials invalid", NotifierConfigError),
        ("auth", 534, b"", NotifierConfigError),
        ("auth", 454, b"4.7.0 Temporary authentication failure", ProviderUnavailableError),
        ("rcpt", 530, b"5.7.0 Authentication required", NotifierConfigError),
        ("rcpt", 550, b"5.1.10 Null MX", InvalidRecipientError),
        ("rcpt", 550, b"5.1.2 Bad destination system address", InvalidRecipientError),
        ("rcpt", 554, b"", PermanentDeliveryError),
        ("data", 354, b"unexpected", ProviderUnavailableError),
        ("data", 452, b"4.3.1 Insufficient system storage", RateLimitedError),
    ],
)
def test_reply_table(stage: str, code: int, reply: bytes, expected: type[DeliveryError]) -> None:
    # When / Then: the stages the fake cannot script (greeting, EHLO, STARTTLS, AUTH) too
    assert classify_smtp_reply(stage, code, reply) is expected


def test_wrong_credentials_are_a_configuration_error(caplog: pytest.LogCaptureFixture) -> None:
    # Given a server that requires AUTH, and a URL with another password
    caplog.set_level(logging.DEBUG)
    with FakeSmtp(credentials=(USER, "the-right-one")) as fake:
        # When
        with pytest.raises(NotifierConfigError) as caught:
            _notifier(fake.url(user=USER, password=PASSWORD)).send(_message())

        # Then
        assert caught.value.code == "535"
        assert "GOVNOTIFY_SMTP_URL" in str(caught.value)
        # (smtplib tries each mechanism the server offers: PLAIN, then LOGIN)
        assert set(fake.failed_logins) == {USER} and fake.messages == []
    _assert_nothing_private(str(caught.value), repr(caught.value), caplog.text)


def test_missing_credentials_are_a_configuration_error() -> None:
    # Given a server that requires AUTH, and a URL without credentials
    with FakeSmtp(credentials=(USER, PASSWORD)) as fake:
        # When / Then
        with pytest.raises(NotifierConfigError) as caught:
            _notifier(fake.url()).send(_message())
        assert caught.value.code == "530"


def test_credentials_for_a_server_without_auth_are_a_configuration_error(fake: FakeSmtp) -> None:
    # When / Then: the fake offers no AUTH without credentials configured
    with pytest.raises(NotifierConfigError, match="offers no AUTH"):
        _notifier(fake.url(user=USER, password=PASSWORD)).send(_message())


# ---- transport failures ----------------------------------------------------------------------
def test_a_refused_connection_is_transient(caplog: pytest.LogCaptureFixture) -> None:
    # Given nothing listening
    caplog.set_level(logging.DEBUG)
    url = f"smtp://{USER}:{PASSWORD}@127.0.0.1:{_closed_port()}"

    # When
    with pytest.raises(ProviderUnavailableError, match="cannot connect") as caught:
        _notifier(url).send(_message())

    # Then
    assert caught.value.provider == "email"
    _assert_nothing_private(str(caught.value), repr(caught.value), caplog.text)


def test_a_silent_server_times_out_within_the_timeout() -> None:
    # Given a server that accepts the connection and never greets
    with silent_listener() as port:
        notifier = _notifier(f"smtp://127.0.0.1:{port}", timeout=0.5)

        # When
        started = time.monotonic()
        with pytest.raises(TransientDeliveryError) as caught:
            notifier.send(_message())
        elapsed = time.monotonic() - started

    # Then: transient, about the timeout; before DATA nothing was accepted, so it is not the
    # ambiguous DeliveryTimeoutError
    assert type(caught.value) is ProviderUnavailableError
    assert "no answer in time" in str(caught.value)
    assert 0.4 <= elapsed < 2.5


def test_no_answer_to_data_is_ambiguous(fake: FakeSmtp) -> None:
    # Given a server that takes the message and answers late
    fake.delay_next(1, 5.0)
    notifier = _notifier(fake.url(), timeout=0.5)

    # When
    started = time.monotonic()
    with pytest.raises(DeliveryTimeoutError, match="may have accepted") as caught:
        notifier.send(_message())

    # Then
    assert time.monotonic() - started < 2.5
    assert caught.value.provider == "email"


# ---- transport security ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "security", "endpoint"),
    [
        ("smtp://127.0.0.1:2525", "plain", "smtp://127.0.0.1:2525"),
        ("smtp://localhost", "plain", "smtp://localhost:587"),
        ("smtp://[::1]:25", "plain", "smtp://[::1]:25"),
        ("smtp://mail.changan.gov.cn", "starttls", "smtp://mail.changan.gov.cn:587"),
        ("smtp://10.8.0.25:25", "starttls", "smtp://10.8.0.25:25"),
        (f"smtp://{USER}:{PASSWORD}@mail.changan.gov.cn:587", "starttls",
         "smtp://mail.changan.gov.cn:587"),
        ("smtps://mail.changan.gov.cn", "smtps", "smtps://mail.changan.gov.cn:465"),
        ("smtps://127.0.0.1:4650", "smtps", "smtps://127.0.0.1:4650"),
    ],
)  # fmt: skip
def test_security_follows_the_url(url: str, security: str, endpoint: str) -> None:
    # When
    notifier = _notifier(url)

    # Then
    assert (notifier.security, notifier.endpoint) == (security, endpoint)
    assert PASSWORD not in repr(notifier) and HEAD not in repr(notifier)


def test_implicit_tls_is_verified(tls: tuple[Any, Any, str | None]) -> None:
    # Given a server speaking implicit TLS with a certificate we trust
    server_context, client_context, _ = tls
    with FakeSmtp(implicit_tls=server_context) as fake:
        # When
        _notifier(fake.url("smtps"), ssl_context=client_context).send(_message())

        # Then
        (got,) = fake.wait_for(1)
        assert got.tls and got.subject == TITLE

        # and with the system's trust store, the throw-away certificate is refused
        with pytest.raises(NotifierConfigError, match="certificate is not trusted"):
            _notifier(fake.url("smtps")).send(_message())


def test_starttls_is_used_and_verified_off_loopback(tls: tuple[Any, Any, str | None]) -> None:
    # Given a server on this host's network address that offers STARTTLS and requires AUTH
    server_context, client_context, remote = tls
    if remote is None:
        pytest.skip("this host has no non-loopback address")
    with FakeSmtp(host=remote, starttls=server_context, credentials=(USER, PASSWORD)) as fake:
        url = fake.url(user=USER, password=PASSWORD)

        # When
        _notifier(url, ssl_context=client_context).send(_message())

        # Then the session was encrypted before the login and the message
        (got,) = fake.wait_for(1)
        assert got.tls and got.login == USER

        # and an untrusted certificate stops it before the credentials leave the host
        with pytest.raises(NotifierConfigError, match="certificate is not trusted"):
            _notifier(url).send(_message())
        assert fake.failed_logins == [] and len(fake.messages) == 1


def test_starttls_is_required_off_loopback(
    tls: tuple[Any, Any, str | None], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a server on this host's network address that does not offer STARTTLS
    _, client_context, remote = tls
    if remote is None:
        pytest.skip("this host has no non-loopback address")
    caplog.set_level(logging.DEBUG)
    with FakeSmtp(host=remote, credentials=(USER, PASSWORD)) as fake:
        # When
        with pytest.raises(NotifierConfigError, match="does not offer STARTTLS") as caught:
            _notifier(fake.url(user=USER, password=PASSWORD), ssl_context=client_context).send(
                _message()
            )

        # Then neither the credentials nor the message went out in clear
        assert fake.failed_logins == [] and fake.messages == []
    _assert_nothing_private(str(caught.value), caplog.text)


def test_loopback_stays_plain_even_when_starttls_is_offered(
    tls: tuple[Any, Any, str | None],
) -> None:
    # Given a local relay offering STARTTLS with a certificate nobody trusts (a "snakeoil" one)
    server_context, _, _ = tls
    with FakeSmtp(starttls=server_context) as fake:
        # When
        _notifier(fake.url()).send(_message())

        # Then it is used in plain SMTP: the traffic never leaves the host
        (got,) = fake.wait_for(1)
        assert not got.tls


# ---- refused before connecting ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"title": " "}, "title or text is empty"),
        ({"text": ""}, "title or text is empty"),
        ({"title": "续证提醒\nBcc: x@y.cn"}, "title has a line break"),
        ({"title": "续" * 201}, "title is 201 characters; a subject takes at most 200"),
        ({"text": "长" * 22000}, r"body is 66\d{3} bytes of UTF-8; at most 65536"),
        ({"data": {"when": object()}}, "data is not JSON-serialisable"),
        ({"message_id": "gc 1"}, "id cannot be a Message-ID"),
        ({"message_id": "gc-1>\r\nBcc: x@y.cn"}, "id cannot be a Message-ID"),
    ],
)
def test_bad_messages_are_refused_before_connecting(
    overrides: dict[str, Any], match: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a notifier whose server does not exist: connecting would be ProviderUnavailable
    caplog.set_level(logging.DEBUG)
    notifier = _notifier(f"smtp://127.0.0.1:{_closed_port()}")

    # When / Then
    with pytest.raises(MessageRejectedError, match=match) as caught:
        notifier.send(_message(**overrides))
    assert caught.value.provider == "email"
    assert "13800138001" not in str(caught.value) + caplog.text


# ---- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "sender", "to", "timeout", "match"),
    [
        (f"http://{USER}:{PASSWORD}@mail.changan.gov.cn", SENDER, HEAD, 10.0,
         "smtp_url must start with smtp:// or smtps://"),
        (f"mailto:{HEAD}", SENDER, HEAD, 10.0, "smtp_url must start with smtp://"),
        ("", SENDER, HEAD, 10.0, "smtp_url must start with smtp://"),
        (f"smtp://{USER}:{PASSWORD}@:587", SENDER, HEAD, 10.0, "smtp_url has no host"),
        (f"smtp://{USER}:{PASSWORD}@mail.changan.gov.cn:99999", SENDER, HEAD, 10.0,
         "port must be a number from 1 to 65535"),
        (f"smtp://{USER}:{PASSWORD}@mail.changan.gov.cn:0", SENDER, HEAD, 10.0,
         "port must be a number from 1 to 65535"),
        (f"smtp://{USER}:{PASSWORD}@mail.changan.gov.cn:smtp", SENDER, HEAD, 10.0,
         "port must be a number"),
        (f"smtp://{USER}:{PASSWORD}@mail.changan.gov.cn:587?starttls=off", SENDER, HEAD, 10.0,
         "STARTTLS cannot be turned off"),
        (f"smtp://{USER}:{PASSWORD}@mail.changan.gov.cn/relay", SENDER, HEAD, 10.0,
         "takes no path, query or fragment"),
        # an unencoded '#' in the password cuts the URL: refused without echoing either part
        (f"smtp://{USER}:{PASSWORD}#x@mail.changan.gov.cn", SENDER, HEAD, 10.0,
         "smtp_url"),
        (f"smtp://{USER}@mail.changan.gov.cn", SENDER, HEAD, 10.0,
         "both user and password, or neither"),
        (f"smtp://:{PASSWORD}@mail.changan.gov.cn", SENDER, HEAD, 10.0,
         "both user and password, or neither"),
        ("smtp://mail.changan.gov.cn", "", HEAD, 10.0, "sender is empty"),
        ("smtp://mail.changan.gov.cn", "govnotify", HEAD, 10.0,
         "sender is not an e-mail address"),
        ("smtp://mail.changan.gov.cn", SENDER, "market-head", 10.0, "to is not an e-mail address"),
        ("smtp://mail.changan.gov.cn", SENDER, f"{HEAD}, tax-head@changan.gov.cn", 10.0,
         "to must hold exactly one address, found 2"),
        ("smtp://mail.changan.gov.cn", SENDER, f"{HEAD}\r\nBcc: x@y.cn", 10.0,
         "to contains a line break"),
        ("smtp://mail.changan.gov.cn", SENDER, "局长@长安.gov.cn", 10.0,
         "to must be an ASCII address"),
        ("smtp://mail.changan.gov.cn", SENDER, "head@changan..gov.cn", 10.0,
         "to is not an e-mail address"),
        ("smtp://mail.changan.gov.cn", SENDER, HEAD, 0, "timeout must be a positive number"),
        ("smtp://mail.changan.gov.cn", SENDER, HEAD, True, "timeout must be a positive number"),
        # every problem at once
        (f"ftp://{USER}:{PASSWORD}@host", "x", "y", -1,
         "smtp_url must start with.*; sender is not.*; to is not.*; timeout must be"),
    ],
)  # fmt: skip
def test_configuration_errors_say_what_is_wrong_and_never_the_password(
    url: str, sender: str, to: str, timeout: Any, match: str
) -> None:
    # When
    with pytest.raises(NotifierConfigError, match=match) as caught:
        EmailNotifier(url, sender, to=to, timeout=timeout)

    # Then
    assert caught.value.provider == "email"
    assert str(caught.value).startswith("e-mail notifier misconfigured: ")
    _assert_nothing_private(str(caught.value), repr(caught.value))


def test_addresses_may_carry_a_display_name() -> None:
    # When
    address = parse_address("长安区政务服务中心 <govnotify@changan.gov.cn>")

    # Then
    assert (address.display_name, address.addr_spec) == (
        "长安区政务服务中心",
        "govnotify@changan.gov.cn",
    )
    with pytest.raises(ValueError, match="bare address"):
        parse_address("局长 <head@changan.gov.cn>", display_name=False)


def _assert_nothing_private(*texts: str) -> None:
    """No password, recipient address or message text in any of ``texts``."""
    for text in texts:
        assert PASSWORD not in text
        assert HEAD not in text and "market-head" not in text
        assert "范秀英" not in text and "LIC-MKT" not in text
