"""Circuit breaker maths with an injected clock, and the router's failover rules, on scripted
in-process notifiers (no network, no sleeping)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client import REGISTRY

from infra.settings import load_settings
from notifiers import registry
from notifiers.base import Notifier
from notifiers.circuit import CircuitBoard, CircuitBreaker, CircuitConfig, CircuitState
from notifiers.errors import (
    DeliveryError,
    DeliveryTimeoutError,
    InvalidRecipientError,
    LookupUnsupportedError,
    NotifierConfigError,
    ProviderUnavailableError,
    RateLimitedError,
    RecipientUnsubscribedError,
    TransientDeliveryError,
)
from notifiers.pacing import LocalPacer
from notifiers.routing import THROTTLE_HOLD_S, RoutingNotifier
from notifiers.sms import OutboundMessage, Receipt, SMSNotifier
from notifiers.sms.sandbox import SandboxNotifier

TO = "+8613800138000"


class FakeClock:
    """Seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run_script(breaker: CircuitBreaker, clock: FakeClock, script: str) -> list[bool]:
    """Play ``script`` ("ok", "err", "+N" to advance N s, "try" to only ask); which asks got a
    permit."""
    granted = []
    for step in script.split():
        if step.startswith("+"):
            clock.advance(float(step[1:]))
            continue
        permit = breaker.acquire()
        granted.append(permit is not None)
        if permit is not None and step != "try":
            permit.record(ok=step == "ok")
    return granted


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def gauge(provider: str) -> float | None:
    return REGISTRY.get_sample_value("govnotify_provider_circuit_open", {"provider": provider})


# ---- the circuit -------------------------------------------------------------------------------
CONFIG = CircuitConfig(window_s=60, min_requests=10, error_rate=0.5, cooldown_s=30)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        # fewer requests than the minimum never open it, even all errors
        ("err " * 9, CircuitState.CLOSED),
        # exactly at the threshold: 5 of 10
        ("ok " * 5 + "err " * 5, CircuitState.OPEN),
        # just under it: 4 of 10
        ("ok " * 6 + "err " * 4, CircuitState.CLOSED),
        # 4 of 9, then one more error: 5 of 10
        ("ok " * 5 + "err " * 4 + "err", CircuitState.OPEN),
        # errors that left the window do not count: 5 old errors, then 5 successes 61 s later
        ("err " * 5 + "+61 " + "ok " * 5, CircuitState.CLOSED),
        # errors that left the window leave the count: 4 new errors of 10 do not open it
        ("err " * 5 + "+61 " + "ok " * 6 + "err " * 4, CircuitState.CLOSED),
        # … and 59 s later they still do
        ("err " * 5 + "+59 " + "ok " * 5, CircuitState.OPEN),
        # open, and the cool-down not over: still open
        ("err " * 10 + "+29", CircuitState.OPEN),
        # the cool-down over: half-open, waiting for a trial
        ("err " * 10 + "+30", CircuitState.HALF_OPEN),
        # the trial succeeds: closed again
        ("err " * 10 + "+30 ok", CircuitState.CLOSED),
        # the trial fails: open for another cool-down
        ("err " * 10 + "+30 err", CircuitState.OPEN),
        ("err " * 10 + "+30 err +30", CircuitState.HALF_OPEN),
        # closed after a trial: the old errors are forgotten, 9 new errors do not reopen it
        ("err " * 10 + "+30 ok " + "err " * 9, CircuitState.CLOSED),
    ],
)
def test_circuit_state_after_a_script(script: str, expected: CircuitState) -> None:
    # Given
    clock = FakeClock()
    breaker = CircuitBreaker(unique("p"), CONFIG, clock)

    # When
    run_script(breaker, clock, script)

    # Then
    assert breaker.state is expected


@pytest.mark.parametrize(
    ("script", "granted"),
    [
        # closed: every request gets a permit
        ("ok ok ok", [True, True, True]),
        # open: none
        ("err " * 10 + "try try", [True] * 10 + [False, False]),
        # half-open: exactly one trial while it is out
        ("err " * 10 + "+30 try try try", [True] * 10 + [True, False, False]),
    ],
)
def test_permits_per_state(script: str, granted: list[bool]) -> None:
    # Given
    clock = FakeClock()
    breaker = CircuitBreaker(unique("p"), CONFIG, clock)

    # When / Then
    assert run_script(breaker, clock, script) == granted


def test_a_late_answer_from_before_the_opening_decides_nothing() -> None:
    # Given: a permit taken while closed, and the circuit opened by other requests meanwhile
    clock = FakeClock()
    breaker = CircuitBreaker(unique("p"), CONFIG, clock)
    late = breaker.acquire()
    assert late is not None
    run_script(breaker, clock, "err " * 10 + "+30")
    trial = breaker.acquire()
    assert trial is not None and trial.trial

    # When: the old request answers well while the trial is still out
    late.record(ok=True)

    # Then: the circuit waits for its trial
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.acquire() is None
    trial.record(ok=True)
    assert breaker.state is CircuitState.CLOSED


def test_a_released_trial_can_be_taken_again() -> None:
    # Given
    clock = FakeClock()
    breaker = CircuitBreaker(unique("p"), CONFIG, clock)
    run_script(breaker, clock, "err " * 10 + "+30")
    trial = breaker.acquire()
    assert trial is not None

    # When
    trial.release()

    # Then
    again = breaker.acquire()
    assert again is not None and again.trial


def test_gauge_follows_the_circuit() -> None:
    # Given
    clock = FakeClock()
    name = unique("p")
    breaker = CircuitBreaker(name, CONFIG, clock)

    # When / Then
    assert gauge(name) == 0
    run_script(breaker, clock, "err " * 10)
    assert gauge(name) == 1
    run_script(breaker, clock, "+30")
    assert breaker.state is CircuitState.HALF_OPEN
    assert gauge(name) == 1  # still out of rotation until the trial says otherwise
    run_script(breaker, clock, "ok")
    assert gauge(name) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_s": 0},
        {"cooldown_s": -1},
        {"min_requests": 0},
        {"error_rate": 0},
        {"error_rate": 1.5},
    ],
)
def test_config_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    # When / Then
    with pytest.raises(ValueError):
        CircuitConfig(**kwargs)


# ---- the router --------------------------------------------------------------------------------
Outcome = str | DeliveryError


class Scripted(SMSNotifier):
    """A provider that answers from a script: "ok" or an error to raise, then "ok" forever."""

    name: ClassVar[str] = "scripted"
    channel: ClassVar[str] = "sms"
    body_maxlen: ClassVar[int] = 500

    def __init__(self, label: str, *script: Outcome) -> None:
        self.label = label
        self.script = list(script)
        self.calls: list[str] = []
        self.found: dict[str, str] = {}
        self.lookup_error: DeliveryError | None = None
        self.statuses: dict[str, str] = {}
        self.status_error: DeliveryError | None = None

    def _send(self, message: OutboundMessage) -> Receipt:
        self.calls.append(message.notification_id)
        outcome = self.script.pop(0) if self.script else "ok"
        if isinstance(outcome, DeliveryError):
            raise outcome
        return Receipt(self.label, f"{self.label}-{len(self.calls)}", "queued", 1)

    def lookup(
        self, to: str, body: str, since: dt.datetime, *, notification_id: str | None = None
    ) -> str | None:
        if self.lookup_error is not None:
            raise self.lookup_error
        return self.found.get(notification_id or body)

    def fetch_status(self, provider_ref: str) -> str | None:
        if self.status_error is not None:
            raise self.status_error
        return self.statuses.get(provider_ref)


def message(n: int = 1, flow: str = "renewal") -> OutboundMessage:
    return OutboundMessage(f"n-{n}", TO, "【长安政务】您好", flow=flow, category="reminders")


def router(
    a: Scripted, b: Scripted, clock: FakeClock | None = None, **routes: list[str]
) -> RoutingNotifier:
    config = CircuitConfig(window_s=60, min_requests=3, error_rate=0.5, cooldown_s=30)
    return RoutingNotifier(
        {a.label: a, b.label: b},
        routes=routes,
        default=[a.label, b.label],
        circuits=CircuitBoard(config, clock or FakeClock()),
    )


def failovers(flow: str, src: str, dst: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "govnotify_provider_failovers_total",
        {"flow": flow, "from_provider": src, "to_provider": dst, "reason": reason},
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("primary", "fallback", "taken_by", "raised", "calls"),
    [
        # the primary takes it
        ("ok", "ok", "a", None, (1, 0)),
        # nothing was sent: the fallback takes it in the same attempt
        (ProviderUnavailableError("503"), "ok", "b", None, (1, 1)),
        (NotifierConfigError("no template"), "ok", "b", None, (1, 1)),
        # over a rate limit: nothing was sent, but the message waits for the same provider (a
        # second provider would defeat a limit that protects the recipient)
        (RateLimitedError("429"), "ok", None, RateLimitedError, (1, 0)),
        (
            RateLimitedError("isv.BUSINESS_LIMIT_CONTROL", scope="recipient"),
            "ok",
            None,
            RateLimitedError,
            (1, 0),
        ),
        # the primary may have it: no second provider, the sweep decides
        (DeliveryTimeoutError("read timeout"), "ok", None, DeliveryTimeoutError, (1, 0)),
        (TransientDeliveryError("unclear"), "ok", None, TransientDeliveryError, (1, 0)),
        # the number is wrong everywhere: raised at once
        (InvalidRecipientError("bad"), "ok", None, InvalidRecipientError, (1, 0)),
        (RecipientUnsubscribedError("stop"), "ok", None, RecipientUnsubscribedError, (1, 0)),
        # the fallback refuses for good
        (
            ProviderUnavailableError("503"),
            InvalidRecipientError("x"),
            None,
            InvalidRecipientError,
            (1, 1),
        ),
        # both down: the last transient error, for the retry queue
        (
            ProviderUnavailableError("503"),
            ProviderUnavailableError("502"),
            None,
            ProviderUnavailableError,
            (1, 1),
        ),
        # the primary down, the fallback over its rate: the fallback's limit is raised
        (ProviderUnavailableError("503"), RateLimitedError("429"), None, RateLimitedError, (1, 1)),
        # a misconfigured primary and a fallback that is down: retry later
        (
            NotifierConfigError("auth"),
            ProviderUnavailableError("503"),
            None,
            ProviderUnavailableError,
            (1, 1),
        ),
        # both misconfigured: an operator must act
        (
            NotifierConfigError("auth"),
            NotifierConfigError("auth"),
            None,
            NotifierConfigError,
            (1, 1),
        ),
    ],
)
def test_failover_rules(
    primary: Outcome,
    fallback: Outcome,
    taken_by: str | None,
    raised: type[DeliveryError] | None,
    calls: tuple[int, int],
) -> None:
    # Given
    a, b = Scripted("a", primary), Scripted("b", fallback)
    notifier = router(a, b)

    # When
    if raised is None:
        receipt = notifier.send(message())
        # Then
        assert receipt.provider == taken_by
    else:
        with pytest.raises(raised) as caught:
            notifier.send(message())
        # Then: the error names the provider that raised it
        expected_provider = "b" if calls == (1, 1) else "a"
        assert caught.value.provider == expected_provider
    assert (len(a.calls), len(b.calls)) == calls


def test_a_failover_is_counted_with_its_reason() -> None:
    # Given
    flow = unique("flow")
    a, b = Scripted("a", ProviderUnavailableError("503")), Scripted("b")
    notifier = router(a, b)
    before = failovers(flow, "a", "b", "provider_unavailable")

    # When
    notifier.send(message(flow=flow))

    # Then
    assert failovers(flow, "a", "b", "provider_unavailable") == before + 1


def test_per_flow_route_prefers_its_own_primary() -> None:
    # Given: green channel prefers b, everything else a
    a, b = Scripted("a"), Scripted("b")
    notifier = router(a, b, green_channel=["b", "a"], default=["a", "b"])

    # When
    green = notifier.send(message(1, flow="green_channel"))
    renewal = notifier.send(message(2, flow="renewal"))

    # Then
    assert (green.provider, renewal.provider) == ("b", "a")
    assert notifier.route("anything") == ["a", "b"]


def test_an_open_circuit_skips_the_primary_until_its_cool_down_then_one_trial_brings_it_back() -> (
    None
):
    # Given: the primary down for three sends (min_requests=3, all errors)
    clock = FakeClock()
    flow = unique("flow")
    a = Scripted("a", *[ProviderUnavailableError("503")] * 3)
    b = Scripted("b")
    notifier = router(a, b, clock)
    for n in range(3):
        assert notifier.send(message(n, flow=flow)).provider == "b"
    assert notifier.circuits.get("a").state is CircuitState.OPEN

    # When: more sends during the cool-down
    during = [notifier.send(message(10 + n, flow=flow)).provider for n in range(5)]

    # Then: the primary is not even asked, and the skips are counted
    assert during == ["b"] * 5
    assert len(a.calls) == 3
    assert failovers(flow, "a", "b", "circuit_open") == 5

    # When: the cool-down passes and the primary has recovered
    clock.advance(30)
    after = [notifier.send(message(20 + n, flow=flow)).provider for n in range(3)]

    # Then: the trial went to the primary, closed the circuit, and traffic stayed there
    assert after == ["a"] * 3
    assert notifier.circuits.get("a").state is CircuitState.CLOSED


def test_timeouts_open_the_circuit_without_failing_over() -> None:
    # Given
    clock = FakeClock()
    a = Scripted("a", *[DeliveryTimeoutError("t")] * 3)
    b = Scripted("b")
    notifier = router(a, b, clock)

    # When
    for n in range(3):
        with pytest.raises(DeliveryTimeoutError):
            notifier.send(message(n))
    nxt = notifier.send(message(9))

    # Then: the timed-out ones never reached b; the next one skipped the open primary
    assert b.calls == ["n-9"]
    assert nxt.provider == "b"


def test_permanent_refusals_do_not_open_the_circuit() -> None:
    # Given: a healthy provider refusing bad numbers
    a = Scripted("a", *[InvalidRecipientError("bad")] * 5)
    notifier = router(a, Scripted("b"))

    # When
    for n in range(5):
        with pytest.raises(InvalidRecipientError):
            notifier.send(message(n))

    # Then
    assert notifier.circuits.get("a").state is CircuitState.CLOSED


def test_every_circuit_open_is_a_transient_failure() -> None:
    # Given
    clock = FakeClock()
    a = Scripted("a", *[ProviderUnavailableError("503")] * 3)
    b = Scripted("b", *[ProviderUnavailableError("503")] * 3)
    notifier = router(a, b, clock)
    for n in range(3):
        with pytest.raises(ProviderUnavailableError):
            notifier.send(message(n))

    # When
    with pytest.raises(ProviderUnavailableError) as caught:
        notifier.send(message(9))

    # Then: no request at all, and the worker will retry it
    assert caught.value.reason == "circuit_open"
    assert (len(a.calls), len(b.calls)) == (3, 3)


def test_a_half_open_trial_that_fails_keeps_traffic_on_the_fallback() -> None:
    # Given
    clock = FakeClock()
    a = Scripted("a", *[ProviderUnavailableError("503")] * 4)
    b = Scripted("b")
    notifier = router(a, b, clock)
    for n in range(3):
        notifier.send(message(n))
    clock.advance(30)

    # When: the trial fails (and fails over), then more sends
    trial = notifier.send(message(5))
    later = notifier.send(message(6))

    # Then
    assert (trial.provider, later.provider) == ("b", "b")
    assert len(a.calls) == 4
    assert notifier.circuits.get("a").state is CircuitState.OPEN


def test_routes_naming_unknown_providers_are_refused() -> None:
    # When / Then
    with pytest.raises(NotifierConfigError, match="gateway"):
        RoutingNotifier({"a": Scripted("a")}, routes={"green_channel": ["gateway"]})


# ---- asking afterwards -------------------------------------------------------------------------
SINCE = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)


def test_find_asks_the_named_provider_only() -> None:
    # Given
    a, b = Scripted("a"), Scripted("b")
    a.found["n-1"] = "A-REF"
    b.found["n-1"] = "B-REF"
    notifier = router(a, b)

    # When / Then
    assert notifier.find(TO, "x", SINCE, notification_id="n-1", provider="b") == ("b", "B-REF")
    assert notifier.lookup(TO, "x", SINCE, notification_id="n-1", provider="a") == "A-REF"
    with pytest.raises(LookupUnsupportedError):
        notifier.lookup(TO, "x", SINCE, provider="twilio")


def test_find_without_a_provider_trusts_only_certain_answers() -> None:
    # Given: a cannot be asked, b has the message
    a, b = Scripted("a"), Scripted("b")
    a.lookup_error = ProviderUnavailableError("down")
    b.found["n-1"] = "B-REF"
    notifier = router(a, b)

    # When / Then: found at b
    assert notifier.find(TO, "x", SINCE, notification_id="n-1") == ("b", "B-REF")
    # … but "not found at b" while a could not say is not "not sent"
    with pytest.raises(ProviderUnavailableError):
        notifier.find(TO, "x", SINCE, notification_id="n-2")
    # … and when every provider says no, it is None
    a.lookup_error = None
    assert notifier.find(TO, "x", SINCE, notification_id="n-2") is None


def test_lookup_passes_the_notification_id_only_to_providers_that_take_it(tmp_path: Path) -> None:
    # Given: the sandbox's lookup takes no notification id
    sandbox = SandboxNotifier(tmp_path / "outbox.jsonl")
    receipt = sandbox.send(OutboundMessage("n-1", TO, "【长安政务】您好"))
    notifier = RoutingNotifier({"sandbox": sandbox})

    # When
    found = notifier.lookup(TO, "【长安政务】您好", SINCE, notification_id="n-1")

    # Then
    assert found == receipt.provider_ref


def test_fetch_status_by_provider_or_by_trying_each() -> None:
    # Given
    a, b = Scripted("a"), Scripted("b")
    b.statuses["B-1"] = "DELIVERED"
    notifier = router(a, b)

    # When / Then: the named provider, or whichever knows the reference
    assert notifier.fetch_status("B-1", provider="b") == "DELIVERED"
    assert notifier.fetch_status("B-1") == "DELIVERED"
    assert notifier.fetch_status("B-1", provider="a") is None
    assert notifier.fetch_status("nowhere") is None


def test_fetch_status_does_not_say_unknown_while_a_provider_could_not_be_asked() -> None:
    # Given
    a, b = Scripted("a"), Scripted("b")
    a.status_error = ProviderUnavailableError("down")
    notifier = router(a, b)

    # When / Then
    with pytest.raises(ProviderUnavailableError) as caught:
        notifier.fetch_status("B-1")
    assert caught.value.provider == "a"
    b.statuses["B-1"] = "SENT"
    assert notifier.fetch_status("B-1") == "SENT"


def test_fetch_status_of_a_provider_that_cannot_be_asked(tmp_path: Path) -> None:
    # Given: the sandbox has no fetch_status
    notifier = RoutingNotifier({"sandbox": SandboxNotifier(tmp_path / "outbox.jsonl")})

    # When / Then
    with pytest.raises(LookupUnsupportedError):
        notifier.fetch_status("SB1", provider="sandbox")
    with pytest.raises(LookupUnsupportedError):
        notifier.fetch_status("SB1")


# ---- building it from settings -----------------------------------------------------------------
@pytest.fixture
def captured_twilio() -> Iterator[list[dict[str, Any]]]:
    """The twilio factory replaced by one that records its arguments (restored afterwards)."""
    calls: list[dict[str, Any]] = []
    original = registry.get_factory("twilio")

    def factory(
        sid: str,
        token: str,
        from_: str,
        *,
        api_base: str | None,
        status_callback_url: str | None = None,
    ) -> Notifier:
        calls.append({"api_base": api_base, "status_callback_url": status_callback_url})
        return Scripted("twilio")

    registry.register("twilio", factory)
    try:
        yield calls
    finally:
        registry.register("twilio", original)


TWILIO = {
    "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "0" * 32,
    "twilio_from": "+15017122661",
}
GATEWAY = {
    "gateway_url": "http://127.0.0.1:1",
    "gateway_key_id": "k",
    "gateway_secret": "s",
    "gateway_generic_template": "SMS_GENERIC",
}


@pytest.mark.parametrize(
    ("overrides", "providers", "default_route"),
    [
        ({}, ["sandbox"], ["sandbox"]),
        (TWILIO, ["twilio"], ["twilio"]),
        (GATEWAY, ["gateway"], ["gateway"]),
        ({**TWILIO, **GATEWAY}, ["gateway", "twilio"], ["twilio", "gateway"]),
        (
            {**TWILIO, **GATEWAY, "sms_routes": {"default": ["gateway", "twilio"]}},
            ["gateway", "twilio"],
            ["gateway", "twilio"],
        ),
        # a route naming the sandbox brings it in beside the real providers
        (
            {**TWILIO, "sms_routes": {"default": ["twilio", "sandbox"]}},
            ["sandbox", "twilio"],
            ["twilio", "sandbox"],
        ),
    ],
)
def test_notifier_from_settings(
    captured_twilio: list[dict[str, Any]],
    tmp_path: Path,
    overrides: dict[str, Any],
    providers: list[str],
    default_route: list[str],
) -> None:
    # Given
    settings = load_settings(data_dir=tmp_path, **overrides)

    # When
    notifier = registry.notifier_from_settings(settings)

    # Then
    assert isinstance(notifier, RoutingNotifier)
    assert sorted(notifier.providers) == providers
    assert notifier.route("renewal") == default_route
    notifier.close()


def test_twilio_gets_the_status_callback_url(
    captured_twilio: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Given
    settings = load_settings(
        data_dir=tmp_path, public_base_url="https://notify.example.gov.cn/", **TWILIO
    )

    # When
    registry.notifier_from_settings(settings)

    # Then
    assert captured_twilio == [
        {
            "api_base": None,
            "status_callback_url": "https://notify.example.gov.cn/callbacks/twilio/status",
        }
    ]


def test_without_a_public_url_twilio_is_asked_for_no_callbacks(
    captured_twilio: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Given: no GOVNOTIFY_PUBLIC_BASE_URL (Twilio could not reach a loopback api anyway)
    settings = load_settings(data_dir=tmp_path, **TWILIO)

    # When
    registry.notifier_from_settings(settings)

    # Then
    assert captured_twilio == [{"api_base": None, "status_callback_url": None}]


def test_a_factory_without_the_callback_argument_still_works(tmp_path: Path) -> None:
    # Given: an older Twilio notifier that knows nothing of status callbacks
    original = registry.get_factory("twilio")
    seen: list[str | None] = []

    def factory(sid: str, token: str, from_: str, *, api_base: str | None) -> Notifier:
        seen.append(api_base)
        return Scripted("twilio")

    registry.register("twilio", factory)
    try:
        # When
        notifier = registry.notifier_from_settings(load_settings(data_dir=tmp_path, **TWILIO))
    finally:
        registry.register("twilio", original)

    # Then
    assert seen == [None]
    assert list(notifier.providers) == ["twilio"]


def test_a_route_naming_an_unconfigured_provider_is_a_config_error(tmp_path: Path) -> None:
    # Given: such settings, past their validation (which refuses them: GOVNOTIFY_SMS_ROUTES)
    settings = load_settings(data_dir=tmp_path).model_copy(
        update={"sms_routes": {"green_channel": ["gateway"]}}
    )

    # When / Then
    with pytest.raises(NotifierConfigError, match="gateway"):
        registry.notifier_from_settings(settings)


def test_notifiers_of_one_process_share_their_circuits(tmp_path: Path) -> None:
    # Given
    settings = load_settings(data_dir=tmp_path)

    # When
    first = registry.notifier_from_settings(settings)
    second = registry.notifier_from_settings(settings)

    # Then
    assert first.circuits is second.circuits
    assert "gateway" in registry.names()


# ---- rate limits and pacing ------------------------------------------------------------------
class StoppedClock:
    """The settable clock's ``utcnow`` at an instant that moves only when told."""

    def __init__(self, at: float = 1_800_000_000.0) -> None:
        self.at = at

    def utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.at, dt.UTC)


def paced_router(
    a: Scripted, b: Scripted, rates: dict[str, float | None]
) -> tuple[RoutingNotifier, LocalPacer, list[float]]:
    """A router over ``a`` then ``b`` at ``rates`` on a :class:`LocalPacer` whose clock stands
    still and whose sleeps are recorded, not slept."""
    slept: list[float] = []
    pacer = LocalPacer(StoppedClock(), sleep=slept.append)  # type: ignore[arg-type]
    config = CircuitConfig(window_s=60, min_requests=3, error_rate=0.5, cooldown_s=30)
    notifier = RoutingNotifier(
        {a.label: a, b.label: b},
        default=[a.label, b.label],
        circuits=CircuitBoard(config, FakeClock()),
        pacer=pacer,
        rates=rates,
    )
    return notifier, pacer, slept


def test_a_rate_limit_neither_opens_nor_closes_the_circuit() -> None:
    # Given: a provider over its limit for more sends than it takes to open a circuit
    clock = FakeClock()
    a = Scripted("a", *[RateLimitedError("429")] * 5)
    notifier = router(a, Scripted("b"), clock)

    # When
    for n in range(5):
        with pytest.raises(RateLimitedError) as caught:
            notifier.send(message(n))

    # Then: it stays in rotation, the error names it, and the fallback was never asked
    assert notifier.circuits.get("a").state is CircuitState.CLOSED
    assert caught.value.provider == "a"


def test_a_rate_limited_half_open_trial_leaves_the_trial_to_the_next_send() -> None:
    # Given: the primary's circuit open, then its cool-down over
    clock = FakeClock()
    a = Scripted("a", *[ProviderUnavailableError("503")] * 3, RateLimitedError("429"))
    b = Scripted("b")
    notifier = router(a, b, clock)
    for n in range(3):
        notifier.send(message(n))
    clock.advance(30)

    # When: the trial is rate-limited, then the next send
    with pytest.raises(RateLimitedError):
        notifier.send(message(5))
    after = notifier.send(message(6))

    # Then: the trial was given back (the provider answered), and the next send is the trial
    assert after.provider == "a"
    assert notifier.circuits.get("a").state is CircuitState.CLOSED


@pytest.mark.parametrize(
    ("error", "next_wait"),
    [
        # our account over its rate: every sender waits what the provider asked
        (RateLimitedError("429", retry_after=5.0), 5.0),
        # … or the default hold when it did not say
        (RateLimitedError("Throttling"), THROTTLE_HOLD_S),
        # one number over the carrier's limit: the provider's pace is untouched
        (RateLimitedError("isv.BUSINESS_LIMIT_CONTROL", scope="recipient", retry_after=60), 0.0),
    ],
)
def test_a_provider_wide_rate_limit_holds_the_provider_back_for_every_sender(
    error: RateLimitedError, next_wait: float
) -> None:
    # Given: an unpaced provider on a shared pacer
    notifier, pacer, _ = paced_router(Scripted("a", error), Scripted("b"), {"a": None})

    # When
    with pytest.raises(RateLimitedError):
        notifier.send(message())

    # Then: the next slot anyone takes of "sms:a" is that far off
    assert pacer.take("sms:a", 0.001) == pytest.approx(next_wait)


def test_each_provider_request_waits_for_its_slot_at_the_providers_rate() -> None:
    # Given: a at 10 a second, b unpaced; the clock stands still
    a, b = Scripted("a"), Scripted("b")
    notifier, _, slept = paced_router(a, b, {"a": 10.0, "b": None})

    # When
    for n in range(4):
        notifier.send(message(n))

    # Then: the first went at once, each next one a tenth of a second after the one before
    assert slept == pytest.approx([0.1, 0.2, 0.3])
    assert notifier.rate("a") == 10.0
    assert notifier.rate("b") is None


def test_a_failover_waits_for_the_fallbacks_own_slot() -> None:
    # Given: a down, b at 2 a second
    a = Scripted("a", *[ProviderUnavailableError("503")] * 2)
    notifier, _, slept = paced_router(a, Scripted("b"), {"a": None, "b": 2.0})

    # When
    receipts = [notifier.send(message(n)) for n in range(2)]

    # Then
    assert [r.provider for r in receipts] == ["b", "b"]
    assert slept == pytest.approx([0.5])


def test_the_declared_rate_is_the_default_and_zero_unpaces() -> None:
    # Given: a provider class declaring 100 a second
    class Declared(Scripted):
        request_rate_per_sec: ClassVar[float | None] = 100.0

    # When
    declared = RoutingNotifier({"a": Declared("a"), "b": Declared("b")}, rates={"b": 0})

    # Then
    assert (declared.rate("a"), declared.rate("b")) == (100.0, None)
