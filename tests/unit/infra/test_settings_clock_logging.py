"""Settings from GOVNOTIFY_* variables, the settable clock, and PII masking in logs."""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from infra.clock import Clock
from infra.logging import MaskingFilter, MaskingFormatter, mask_mobile, mask_pii
from infra.settings import EMBEDDED_KAFKA_PORT, SettingsError, load_settings

#: A well-formed Twilio Account SID (the shapes themselves: tests/unit/test_provider_config.py).
SID = "AC" + "0123456789abcdef" * 2


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GOVNOTIFY_* variable of the machine leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("GOVNOTIFY_"):
            monkeypatch.delenv(name)


# ---- settings --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GOVNOTIFY_TIMEZONE": "Mars/Base"}, ["GOVNOTIFY_TIMEZONE"]),
        ({"GOVNOTIFY_AMQP_URL": "http://x"}, ["GOVNOTIFY_AMQP_URL"]),
        ({"GOVNOTIFY_KAFKA_PARTITIONS": "0"}, ["GOVNOTIFY_KAFKA_PARTITIONS"]),
        ({"GOVNOTIFY_KAFKA_PARTITIONS": "zero"}, ["GOVNOTIFY_KAFKA_PARTITIONS"]),
        ({"GOVNOTIFY_DATABASE_URL": "mysql://x"}, ["GOVNOTIFY_DATABASE_URL"]),
        ({"GOVNOTIFY_TODAY": "2026-02-30"}, ["GOVNOTIFY_TODAY"]),
        ({"GOVNOTIFY_KAFKA_URL": "http://a:1"}, ["GOVNOTIFY_KAFKA_URL"]),
        ({"GOVNOTIFY_RENEWAL_SMS_OFFSETS": "[30, -1]"}, ["GOVNOTIFY_RENEWAL_SMS_OFFSETS"]),
        (
            {"GOVNOTIFY_TWILIO_ACCOUNT_SID": SID},
            ["GOVNOTIFY_TWILIO_AUTH_TOKEN", "GOVNOTIFY_TWILIO_FROM"],
        ),
        ({"GOVNOTIFY_TWILIO_ACCOUNT_SID": "AC123"}, ["GOVNOTIFY_TWILIO_ACCOUNT_SID"]),
        (
            {"GOVNOTIFY_GATEWAY_URL": "https://sms.example.cn"},
            ["GOVNOTIFY_GATEWAY_KEY_ID", "GOVNOTIFY_GATEWAY_SECRET"],
        ),
        ({"GOVNOTIFY_SMS_ROUTES": '{"default": ["twilio"]}'}, ["GOVNOTIFY_SMS_ROUTES"]),
        ({"GOVNOTIFY_STAFF_DIRECTORY": "/nonexistent/staff.json"}, ["GOVNOTIFY_STAFF_DIRECTORY"]),
        (
            {"GOVNOTIFY_TIMEZONE": "Mars/Base", "GOVNOTIFY_KAFKA_PARTITIONS": "0"},
            ["GOVNOTIFY_TIMEZONE", "GOVNOTIFY_KAFKA_PARTITIONS"],
        ),
    ],
)
def test_bad_setting_error_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: list[str]
) -> None:
    # Given a bad value in the environment
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    # When settings are loaded
    with pytest.raises(SettingsError) as info:
        load_settings()

    # Then the message names every variable to fix
    message = str(info.value)
    for name in named:
        assert name in message


def test_only_account_sid_does_not_name_it_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given only the Twilio account sid
    monkeypatch.setenv("GOVNOTIFY_TWILIO_ACCOUNT_SID", SID)

    # When settings are loaded
    with pytest.raises(SettingsError) as info:
        load_settings()

    # Then the missing list has the other two only
    missing = str(info.value).split("missing", 1)[1]
    assert "GOVNOTIFY_TWILIO_ACCOUNT_SID" not in missing


def test_all_three_twilio_credentials_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given all three credentials
    monkeypatch.setenv("GOVNOTIFY_TWILIO_ACCOUNT_SID", SID)
    monkeypatch.setenv("GOVNOTIFY_TWILIO_AUTH_TOKEN", "0123456789abcdef" * 2)
    monkeypatch.setenv("GOVNOTIFY_TWILIO_FROM", "+15005550006")

    # When / Then
    assert load_settings().twilio_enabled


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given no GOVNOTIFY_* variable, in some working folder
    monkeypatch.chdir(tmp_path)

    # When settings are loaded
    s = load_settings()

    # Then the documented defaults and derived names apply
    assert s.exchange == "govnotify.events"
    assert s.relay_queue == "govnotify.relay"
    assert s.dead_letter_queue == "govnotify.events.dead"
    assert s.topics == [
        "govnotify.licenses",
        "govnotify.cases",
        "govnotify.evaluations",
        "govnotify.ratings",
        "govnotify.epoch",
    ]
    assert s.queue("delivery") == "govnotify.delivery"
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / '.govnotify/govnotify.db'}"
    assert s.kafka_embedded
    assert s.kafka_bootstrap == f"127.0.0.1:{EMBEDDED_KAFKA_PORT}"
    assert s.renewal_sms_offsets == [30, 7]
    assert s.renewal_call_offsets == [3]
    assert s.timezone == "Asia/Shanghai"
    assert s.today is None
    assert not s.twilio_enabled


@pytest.mark.parametrize(
    ("kafka_url", "bootstrap", "faust"),
    [
        ("kafka://a:1", "a:1", "kafka://a:1"),
        ("kafka://a:1;kafka://b:2", "a:1,b:2", "kafka://a:1;kafka://b:2"),
        ("kafka://a:1,kafka://b:2", "a:1,b:2", "kafka://a:1;kafka://b:2"),
    ],
)
def test_kafka_bootstrap_from_url(
    monkeypatch: pytest.MonkeyPatch, kafka_url: str, bootstrap: str, faust: str
) -> None:
    # Given a Kafka URL with one or more brokers
    monkeypatch.setenv("GOVNOTIFY_KAFKA_URL", kafka_url)

    # When settings are loaded
    s = load_settings()

    # Then aiokafka and faust get their own forms of it
    assert not s.kafka_embedded
    assert s.kafka_bootstrap == bootstrap
    assert s.faust_broker == faust


def test_namespace_and_data_dir_drive_names_and_sqlite_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a namespace and a data folder
    monkeypatch.setenv("GOVNOTIFY_NAMESPACE", "t1")
    monkeypatch.setenv("GOVNOTIFY_DATA_DIR", str(tmp_path / "d"))

    # When settings are loaded
    s = load_settings()

    # Then every name carries the namespace and SQLite lives under the data folder
    assert s.exchange == "t1.events"
    assert s.topics == ["t1.licenses", "t1.cases", "t1.evaluations", "t1.ratings", "t1.epoch"]
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'd' / 'govnotify.db'}"


def test_offsets_from_env_are_deduplicated_and_sorted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given offsets in any order, with a duplicate
    monkeypatch.setenv("GOVNOTIFY_RENEWAL_SMS_OFFSETS", "[7, 30, 7, 14]")

    # When / Then
    assert load_settings().renewal_sms_offsets == [30, 14, 7]


def test_today_is_read_as_a_date(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a pinned day
    monkeypatch.setenv("GOVNOTIFY_TODAY", "2026-02-28")

    # When / Then
    assert load_settings().today == dt.date(2026, 2, 28)


# ---- clock -----------------------------------------------------------------------------------
@pytest.mark.parametrize("zone", ["Asia/Shanghai", "UTC", "America/New_York"])
def test_pinned_clock_gives_that_day_in_its_zone(zone: str) -> None:
    # Given a clock pinned to a day
    tz = ZoneInfo(zone)
    clock = Clock(tz, dt.date(2026, 2, 28))

    # When asked for today and now
    now = clock.now()

    # Then both are that day, and now keeps the zone and the real time of day
    assert clock.today() == dt.date(2026, 2, 28)
    assert now.date() == dt.date(2026, 2, 28)
    assert now.tzinfo is tz
    real = dt.datetime.now(tz)
    assert abs(_seconds_of_day(now) - _seconds_of_day(real)) < 60


def _seconds_of_day(value: dt.datetime) -> float:
    return value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6


def test_clocks_sharing_an_epoch_agree_whenever_they_start() -> None:
    # Given a pinned instant that was read 40 s ago (a process started late joins it)
    tz = ZoneInfo("Asia/Shanghai")
    start = dt.datetime(2026, 11, 26, 10, 0, tzinfo=tz)
    epoch = time.time() - 40

    # When one clock joins the epoch and another starts on its own
    shared = Clock(tz, start=start, epoch=epoch).now()
    own = Clock(tz, start=start).now()

    # Then the shared clock is 40 s on, the other at the pinned instant
    assert 40 <= (shared - start).total_seconds() < 45
    assert 0 <= (own - start).total_seconds() < 5


def test_now_epoch_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given GOVNOTIFY_NOW and GOVNOTIFY_NOW_EPOCH
    monkeypatch.setenv("GOVNOTIFY_NOW", "2026-11-26T10:00:00+08:00")
    monkeypatch.setenv("GOVNOTIFY_NOW_EPOCH", str(time.time() - 3600))

    # When the clock comes from the settings
    clock = Clock.from_settings(load_settings())

    # Then it reads an hour past the pinned instant
    assert clock.now().hour == 11


@pytest.mark.parametrize("value", ["-1", "0", "yesterday"])
def test_a_bad_now_epoch_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # Given a bad epoch
    monkeypatch.setenv("GOVNOTIFY_NOW_EPOCH", value)

    # When / Then
    with pytest.raises(SettingsError, match="GOVNOTIFY_NOW_EPOCH"):
        load_settings()


def test_unpinned_clock_is_local_today_in_its_zone() -> None:
    # Given an unpinned clock in Asia/Shanghai
    tz = ZoneInfo("Asia/Shanghai")
    clock = Clock(tz)

    # When / Then: it is the Shanghai date, whatever the machine's zone
    before = dt.datetime.now(tz).date()
    today = clock.today()
    after = dt.datetime.now(tz).date()
    assert today in (before, after)
    assert clock.now().tzinfo is tz


def test_clock_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given settings with a zone and a pinned day
    monkeypatch.setenv("GOVNOTIFY_TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("GOVNOTIFY_TODAY", "2026-11-26")

    # When a clock is made from them
    clock = Clock.from_settings(load_settings())

    # Then it uses both
    assert clock.today() == dt.date(2026, 11, 26)
    assert clock.now().tzinfo == ZoneInfo("Europe/Berlin")


# ---- masking ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("13800138000", "138****8000"),
        ("+8613800138000", "+86138****8000"),
        ("8613800138000", "86138****8000"),
        ("+86 138 0013 8000", "+86 138****8000"),
        ("138-0013-8000", "138****8000"),
        ("+86-138-0013-8000", "+86-138****8000"),
        ("0086 13800138000", "0086 138****8000"),
        ("电话13800138000。", "电话138****8000。"),
        ("a13800138000b", "a138****8000b"),
        ("110105199001010123", "110105********0123"),
        ("11010519900101012X", "110105********012X"),
        ("11010519900101012x", "110105********012x"),
        (
            "身份证110105199001010123，手机13800138000",
            "身份证110105********0123，手机138****8000",
        ),
        # digits that only look like a number inside a longer run are not personal data
        ("订单号 2026112613800138000123", "订单号 2026112613800138000123"),
        ("138001380001", "138001380001"),
        ("110105199001010123456", "110105199001010123456"),
        # not a mainland mobile (second digit 2) and too short
        ("12800138000", "12800138000"),
        ("1380013800", "1380013800"),
        ("no numbers here", "no numbers here"),
    ],
)
def test_mask_pii(text: str, masked: str) -> None:
    # Given / When / Then
    assert mask_pii(text) == masked


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+8613800138000", "+86138****8000"),
        ("13800138000", "138****8000"),
        ("12345", "*****"),
    ],
)
def test_mask_mobile(number: str, masked: str) -> None:
    # Given / When / Then
    assert mask_mobile(number) == masked


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose one handler (with the masking filter) writes to a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger("govnotify.test.masking")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.propagate = True


def test_masking_filter_masks_arguments(captured: tuple[logging.Logger, io.StringIO]) -> None:
    # Given a handler with the masking filter (and a formatter that knows nothing of it)
    logger, buffer = captured

    # When a message is logged with a phone number and an ID number as arguments
    logger.info("sms to %s for holder %s", "+8613800138000", "110105199001010123")

    # Then the line carries neither in clear
    line = buffer.getvalue()
    assert "13800138000" not in line
    assert "199001010123" not in line
    assert "sms to +86138****8000 for holder 110105********0123" in line


def test_masking_filter_masks_exception_tracebacks(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    # Given a handler with the masking filter
    logger, buffer = captured

    # When an exception whose message holds a phone number is logged with its traceback
    try:
        raise RuntimeError("provider refused 13800138000")
    except RuntimeError:
        logger.exception("delivery failed")

    # Then the traceback is there, the number is not
    text = buffer.getvalue()
    assert "Traceback" in text
    assert "RuntimeError: provider refused 138****8000" in text
    assert "13800138000" not in text


def test_masking_formatter_masks_the_final_line() -> None:
    # Given a record with the number in an argument and in its exception
    formatter = MaskingFormatter("%(message)s")
    try:
        raise ValueError("bad number 13900139000")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "to %s", ("13800138000",), exc_info)

    # When it is formatted
    text = formatter.format(record)

    # Then neither number is in clear
    assert "13800138000" not in text
    assert "13900139000" not in text
    assert text.startswith("to 138****8000")
    assert "ValueError: bad number 139****9000" in text
