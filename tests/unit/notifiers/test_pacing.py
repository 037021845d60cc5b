"""Send slots: the arithmetic every backend shares, table-driven, on a clock that moves only when
told (the local backend, and the database backend on a SQLite file); the settings' rates and the
registry's choice of pacer. The database backend shared by processes on PostgreSQL is tested in
tests/integration/test_pacing.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlmodel import Session

from infra.db import get_engine, session, upgrade
from infra.settings import Settings, SettingsError, load_settings
from notifiers import registry
from notifiers.pacing import (
    DatabasePacer,
    LocalPacer,
    NoPacer,
    Pacer,
    interval_of,
    release_key,
)
from notifiers.sms.gateway import HttpGatewayNotifier
from notifiers.sms.sandbox import SandboxNotifier
from notifiers.sms.twilio import TwilioSMSNotifier
from notifiers.staff.email import EmailNotifier
from notifiers.staff.webhook import WebhookNotifier
from schemas.models import SendPace

#: Unix time the tests' clock starts at (2027-01-15 08:00 UTC; any instant would do).
T0 = 1_800_000_000.0


class StoppedClock:
    """The settable clock's ``utcnow``, at ``T0`` plus what the test moved it by."""

    def __init__(self) -> None:
        self.at = T0

    def utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.at, dt.UTC)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Iterator[Settings]:
    s = load_settings(namespace="tpace", data_dir=tmp_path / "data", database_url="")
    upgrade(s)
    yield s
    get_engine(s.resolved_database_url).dispose()


Backend = Callable[[StoppedClock], Pacer]


@pytest.fixture(params=["local", "database"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Builds the backend under test on a given clock."""
    if request.param == "local":
        return lambda clock: LocalPacer(clock)  # type: ignore[arg-type]
    settings = request.getfixturevalue("sqlite_settings")
    return lambda clock: DatabasePacer(settings, clock)  # type: ignore[arg-type]


# Each step: (seconds since T0, operation, argument) → the seconds waited ("take"), the slot
# after T0 ("reserve", its argument the instant not to be earlier than), or None ("hold").
# Every key is "k" with an interval of 0.5 s unless the step says otherwise.
Step = tuple[float, str, float, float | None]

CASES: dict[str, list[Step]] = {
    "a first send goes at once": [(0, "take", 0.5, 0.0)],
    "sends at one instant are one interval apart": [
        (0, "take", 0.5, 0.0),
        (0, "take", 0.5, 0.5),
        (0, "take", 0.5, 1.0),
    ],
    "a send part of an interval later waits the rest": [
        (0, "take", 0.5, 0.0),
        (0.2, "take", 0.5, 0.3),
    ],
    "an idle sender saves up no burst": [
        (0, "take", 0.5, 0.0),
        (10, "take", 0.5, 0.0),
        (10, "take", 0.5, 0.5),
    ],
    "the interval is the taker's: a slower rate spaces the next slot further": [
        (0, "take", 2.0, 0.0),
        (0, "take", 0.5, 2.0),
    ],
    "a hold pushes the next slot back": [(0, "hold", 5.0, None), (1, "take", 0.5, 4.0)],
    "a hold never brings a later slot forward": [
        (0, "take", 2.0, 0.0),
        (0, "take", 2.0, 2.0),
        (0, "hold", 1.0, None),
        (0, "take", 2.0, 4.0),
    ],
    "a hold that has passed costs nothing": [(0, "hold", 1.0, None), (3, "take", 0.5, 0.0)],
    "a release spread starts at its instant, one interval apart": [
        (0, "reserve", 100.0, 100.0),
        (0, "reserve", 100.0, 100.5),
        (50, "reserve", 100.0, 101.0),
    ],
    "a reservation past the spread's end starts from its own instant": [
        (0, "reserve", 100.0, 100.0),
        (0, "reserve", 200.0, 200.0),
        (0, "reserve", 100.0, 200.5),
    ],
}


def play(pacer: Pacer, clock: StoppedClock, steps: list[Step], s: Session) -> list[float | None]:
    results: list[float | None] = []
    for at, operation, argument, _ in steps:
        clock.at = T0 + at
        if operation == "take":
            results.append(pacer.take("k", argument))
        elif operation == "hold":
            pacer.hold("k", argument)
            results.append(None)
        else:
            not_before = dt.datetime.fromtimestamp(T0 + argument, dt.UTC)
            slot = pacer.reserve_at(s, "k", not_before, 0.5)
            s.commit()
            results.append(slot.timestamp() - T0)
    return results


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_slot_arithmetic(backend: Backend, steps: list[Step], sqlite_settings: Settings) -> None:
    # Given
    clock = StoppedClock()
    pacer = backend(clock)

    # When
    with session(sqlite_settings) as s:
        results = play(pacer, clock, steps, s)

    # Then
    assert results == pytest.approx([expected for *_, expected in steps])


def test_keys_keep_their_own_pace(backend: Backend) -> None:
    # Given
    clock = StoppedClock()
    pacer = backend(clock)

    # When: two senders at one instant, and a hold on one of them
    waits = [pacer.take("sms:a", 1.0), pacer.take("sms:b", 1.0), pacer.take("sms:a", 1.0)]
    pacer.hold("sms:b", 7.0)

    # Then
    assert waits == [0.0, 0.0, 1.0]
    assert pacer.take("sms:a", 1.0) == pytest.approx(2.0)
    assert pacer.take("sms:b", 1.0) == pytest.approx(7.0)


def test_wait_sleeps_until_the_slot_and_an_unpaced_sender_never_asks() -> None:
    # Given: a pacer that records its sleeps
    slept: list[float] = []
    pacer = LocalPacer(StoppedClock(), sleep=slept.append)  # type: ignore[arg-type]

    # When
    waited = [pacer.wait("k", 0.25) for _ in range(3)] + [pacer.wait("k", None)]

    # Then
    assert waited == [0.0, 0.25, 0.5, 0.0]
    assert slept == [0.25, 0.5]


def test_no_pacer_paces_nothing() -> None:
    # Given
    pacer = NoPacer()
    at = dt.datetime(2027, 1, 15, 0, 0, tzinfo=dt.UTC)

    # When / Then
    assert [pacer.take("k", 10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    pacer.hold("k", 60.0)
    assert pacer.take("k", 10.0) == 0.0
    assert pacer.reserve_at(None, "k", at, 10.0) == at  # type: ignore[arg-type]


def test_the_database_pacer_keeps_one_row_per_key_and_brings_a_purged_one_back(
    sqlite_settings: Settings,
) -> None:
    # Given
    clock = StoppedClock()
    pacer = DatabasePacer(sqlite_settings, clock)  # type: ignore[arg-type]
    pacer.take("sms:gateway", 0.01)
    pacer.take("sms:gateway", 0.01)

    # When: the row is deleted (a purge), and the sender goes on
    with session(sqlite_settings) as s:
        s.execute(SendPace.__table__.delete())
        s.commit()
    wait = pacer.take("sms:gateway", 0.01)

    # Then: it starts afresh, with one row
    assert wait == 0.0
    with session(sqlite_settings) as s:
        rows = s.execute(select(SendPace.key, SendPace.next_at)).all()
    assert rows == [("sms:gateway", pytest.approx(T0 + 0.01))]


def test_release_keys_name_the_provider_and_the_instant_in_utc() -> None:
    # Given 08:00 in Shanghai
    at = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))

    # When / Then
    assert release_key("gateway", at) == "release:gateway:2026-11-27T00:00:00+00:00"
    assert [interval_of(r) for r in (None, 0, 4.0)] == [None, None, 0.25]


# ---- rates -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("", {}),
        (
            "gateway=100,twilio=50,webhook=0.333,email=1",
            {"gateway": 100.0, "twilio": 50.0, "webhook": 0.333, "email": 1.0},
        ),
        ("gateway = 100 , sandbox=0", {"gateway": 100.0, "sandbox": 0.0}),
        ('{"twilio": 200}', {"twilio": 200.0}),
    ],
)
def test_send_rates_are_read_as_sender_equals_rate_or_json(
    monkeypatch: pytest.MonkeyPatch, variable: str, expected: dict[str, float]
) -> None:
    # Given
    monkeypatch.setenv("GOVNOTIFY_SEND_RATES", variable)

    # When
    rates = load_settings().send_rates

    # Then
    assert rates == expected
    # … and a child process given Settings.env() reads the same
    handed_on = load_settings().env().get("GOVNOTIFY_SEND_RATES", "")
    monkeypatch.setenv("GOVNOTIFY_SEND_RATES", handed_on)
    assert load_settings().send_rates == rates


@pytest.mark.parametrize(
    ("variable", "says"),
    [
        ("fax=1", "unknown sender 'fax'"),
        ("gateway=-1", "0 or more"),
        ("gateway=inf", "0 or more"),
        ("gateway", "not sender=rate"),
        ("gateway=fast", "valid number"),
        ("{gateway", "not valid JSON"),
    ],
)
def test_bad_send_rates_stop_the_process_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, says: str
) -> None:
    # Given
    monkeypatch.setenv("GOVNOTIFY_SEND_RATES", variable)

    # When / Then
    with pytest.raises(SettingsError, match="GOVNOTIFY_SEND_RATES") as caught:
        load_settings()
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("name", "declared", "rates", "expected"),
    [
        # the declared limits are the defaults
        ("gateway", HttpGatewayNotifier.request_rate_per_sec, {}, 100.0),
        ("twilio", TwilioSMSNotifier.request_rate_per_sec, {}, 50.0),
        ("webhook", WebhookNotifier.request_rate_per_sec, {}, 20 / 60),
        # the sandboxes and e-mail are not paced unless configured
        ("sandbox", SandboxNotifier.request_rate_per_sec, {}, None),
        ("email", EmailNotifier.request_rate_per_sec, {}, None),
        ("email", EmailNotifier.request_rate_per_sec, {"email": 1.0}, 1.0),
        # configured wins; 0 unpaces
        ("gateway", 100.0, {"gateway": 20.0}, 20.0),
        ("gateway", 100.0, {"gateway": 0.0}, None),
    ],
)
def test_a_senders_rate_is_the_setting_else_its_declared_limit(
    tmp_path: Path,
    name: str,
    declared: float | None,
    rates: dict[str, float],
    expected: float | None,
) -> None:
    # Given
    settings = load_settings(data_dir=tmp_path, send_rates=rates)

    # When / Then
    assert registry.send_rate(name, declared, settings) == expected


@pytest.mark.parametrize(
    ("fmt", "expected"), [("wecom", 20 / 60), ("dingtalk", 20 / 60), ("json", None)]
)
def test_robots_declare_their_20_a_minute_and_a_json_webhook_nothing(
    fmt: str, expected: float | None
) -> None:
    # Given
    secret = "s3cret" if fmt == "dingtalk" else None
    notifier = WebhookNotifier("https://hooks.example.cn/x", fmt=fmt, secret=secret)  # type: ignore[arg-type]

    # When / Then
    assert notifier.declared_rate == expected


def test_the_sandbox_demo_is_not_paced_and_touches_no_database(tmp_path: Path) -> None:
    # Given: no provider configured (the demo, the benchmarks' default)
    settings = load_settings(data_dir=tmp_path / "data", database_url="")

    # When
    notifier = registry.notifier_from_settings(settings)

    # Then
    assert notifier.rate("sandbox") is None
    assert isinstance(notifier.pacer, NoPacer)
    assert not (tmp_path / "data" / "govnotify.db").exists()


def test_a_paced_provider_gets_the_process_pacer_on_the_database(tmp_path: Path) -> None:
    # Given: the sandbox paced
    settings = load_settings(data_dir=tmp_path / "data", send_rates={"sandbox": 5})

    # When
    first = registry.notifier_from_settings(settings)
    second = registry.notifier_from_settings(settings)

    # Then: one pacer per process, shared through the database
    assert first.rate("sandbox") == 5.0
    assert isinstance(first.pacer, DatabasePacer)
    assert first.pacer is second.pacer is registry.pacer(settings)


def test_without_its_table_the_database_pacer_paces_this_process_alone_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given: a database the migrations have not reached
    settings = load_settings(data_dir=tmp_path / "data", database_url="")
    clock = StoppedClock()
    pacer = DatabasePacer(settings, clock)  # type: ignore[arg-type]
    at = dt.datetime.fromtimestamp(T0 + 100, dt.UTC)

    # When
    with caplog.at_level("WARNING", logger="notifiers.pacing"):
        waits = [pacer.take("sms:gateway", 0.5) for _ in range(3)]
        pacer.hold("sms:gateway", 10.0)
        with session(settings) as s:
            slots = [pacer.reserve_at(s, "release:x", at, 0.5) for _ in range(2)]

    # Then: paced all the same, in this process; one warning naming the fix
    assert waits == [0.0, 0.5, 1.0]
    assert pacer.take("sms:gateway", 0.5) == pytest.approx(10.0)
    assert [slot.timestamp() - T0 for slot in slots] == [100.0, 100.5]
    warnings = [r.getMessage() for r in caplog.records if r.name == "notifiers.pacing"]
    assert len(warnings) == 1 and "govnotify db upgrade" in warnings[0]
