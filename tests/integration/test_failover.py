"""Failover, circuit breaking and per-flow routes through the real worker process, with Twilio
and the mainland gateway both at loopback fakes.

The worker and the scheduler run as real processes (tests/support Pipeline); notifications
are written to PostgreSQL and handed over by the scheduler, so every provider request a test
sees is one the worker made. Circuit thresholds are test-sized: 3 requests, 50 % errors, a 3 s
cool-down.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from schemas.models import ScheduledJob
from tests.fakes.sms_gateway import FakeSmsGateway
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, metric, scrape, wait_until
from tests.support.delivery import (
    GATEWAY_TEMPLATES,
    notification,
    queue_sms,
    settled,
    with_providers,
)

pytestmark = pytest.mark.integration

BODY = "【长安政务】您的办件已办结，请到窗口领取。退订请致电12345"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def gateway() -> Iterator[FakeSmsGateway]:
    # Held answers (the "timeout" script) outlast the notifier's 5 s read timeout.
    with FakeSmsGateway(templates=GATEWAY_TEMPLATES, hold_s=30) as fake:
        yield fake


def mobile(n: int) -> str:
    return f"+86138{n:08d}"


def start(pipeline: Pipeline, routed: Settings) -> None:
    pipeline.set_env(**routed.env())
    pipeline.worker()
    pipeline.scheduler()


def worker_metric(settings: Settings, name: str, **labels: str) -> float:
    return metric(scrape(settings.worker_metrics_port), name, **labels)


def send_until_it_reaches(
    settings: Settings, provider: str, flow: str, *, deadline: float = 30
) -> str:
    """Send one message at a time until one is taken by ``provider`` (the circuit's cool-down
    has passed and its trial succeeded); the id of that message."""
    taken: list[str] = []

    def one_more() -> bool:
        nid = queue_sms(settings, flow=flow, to=mobile(900 + len(taken)), body=BODY)
        wait_until(lambda: settled(settings, [nid]), 20, message="a probe did not settle")
        taken.append(nid)
        return notification(settings, nid).provider == provider

    wait_until(one_more, deadline, interval=0.2, message=f"traffic never came back to {provider}")
    return taken[-1]


def test_5xx_on_the_primary_move_traffic_to_the_fallback_and_back_after_the_cool_down(
    settings: Settings, pipeline: Pipeline, twilio: FakeTwilio, gateway: FakeSmsGateway
) -> None:
    # Given: Twilio primary, answering 503 three times ("nothing was sent")
    routed = with_providers(
        settings, twilio, gateway, sms_routes={"default": ["twilio", "gateway"]}
    )
    twilio.fail_next(2, 503)
    twilio.fail_next(1, 503, 20503)
    start(pipeline, routed)

    # When: three messages, one after the other
    first = []
    for n in range(3):
        first.append(queue_sms(routed, flow="callback_notice", to=mobile(n), body=BODY))
        wait_until(lambda: settled(routed, first), 30, message="first messages did not settle")

    # Then: each failed over within its one attempt and arrived at the gateway
    rows = [notification(routed, nid) for nid in first]
    assert [(r.status, r.provider, r.attempts) for r in rows] == [("sent", "gateway", 1)] * 3
    assert sorted(m["out_id"] for m in gateway.messages) == sorted(first)
    assert twilio.attempts == 3 and twilio.messages == []
    assert [r.provider_ref for r in rows] == [
        next(m["biz_id"] for m in gateway.messages if m["out_id"] == r.id) for r in rows
    ]

    # When: three more while Twilio's circuit is open
    during = [
        queue_sms(routed, flow="callback_notice", to=mobile(10 + n), body=BODY) for n in range(3)
    ]
    wait_until(lambda: settled(routed, during), 30, message="messages during the outage")

    # Then: Twilio was not even asked; the gauge and the failovers say why
    assert {notification(routed, nid).provider for nid in during} == {"gateway"}
    assert twilio.attempts == 3
    assert worker_metric(routed, "govnotify_provider_circuit_open", provider="twilio") == 1
    for reason, count in (("provider_unavailable", 3), ("circuit_open", 3)):
        assert (
            worker_metric(
                routed,
                "govnotify_provider_failovers_total",
                flow="callback_notice",
                from_provider="twilio",
                to_provider="gateway",
                reason=reason,
            )
            == count
        ), reason

    # When: Twilio has recovered, and the cool-down passes
    back = send_until_it_reaches(routed, "twilio", "callback_notice")
    after = [
        queue_sms(routed, flow="callback_notice", to=mobile(20 + n), body=BODY) for n in range(3)
    ]
    wait_until(lambda: settled(routed, after), 30, message="messages after recovery")

    # Then: the trial closed the circuit and traffic is back on the primary
    assert notification(routed, back).provider == "twilio"
    assert {notification(routed, nid).provider for nid in after} == {"twilio"}
    assert worker_metric(routed, "govnotify_provider_circuit_open", provider="twilio") == 0
    assert len(twilio.messages) == 4
    assert all(m["body"] == BODY for m in twilio.messages)


@pytest.mark.parametrize(
    ("primary", "failure", "scope"),
    [
        # the carrier's anti-harassment limit on one number: Twilio would defeat it
        ("gateway", "isv.BUSINESS_LIMIT_CONTROL", "recipient"),
        # our account over the gateway's rate
        ("gateway", 429, "provider"),
        # … or over Twilio's
        ("twilio", (429, 20429), "provider"),
    ],
)
def test_a_rate_limit_waits_for_the_same_provider_instead_of_failing_over(
    settings: Settings,
    pipeline: Pipeline,
    twilio: FakeTwilio,
    gateway: FakeSmsGateway,
    primary: str,
    failure: tuple[int, int] | int | str,
    scope: str,
) -> None:
    # Given: the primary refuses the first message as over a rate limit, then takes messages
    fallback = "gateway" if primary == "twilio" else "twilio"
    routed = with_providers(settings, twilio, gateway, sms_routes={"default": [primary, fallback]})
    if isinstance(failure, tuple):
        twilio.fail_next(1, *failure)
    else:
        gateway.fail_next(1, failure)
    start(pipeline, routed)

    # When
    nid = queue_sms(routed, flow="callback_notice", to=mobile(7), body=BODY)
    wait_until(lambda: settled(routed, [nid]), 30, message="did not settle")

    # Then: sent by the primary on its second attempt (the retry queue), never by the fallback
    row = notification(routed, nid)
    assert (row.status, row.provider, row.attempts) == ("sent", primary, 2)
    attempts = {"twilio": twilio.attempts, "gateway": gateway.attempts}
    assert attempts == {primary: 2, fallback: 0}
    # … the provider stayed in rotation, no failover was counted, the limit was
    assert worker_metric(routed, "govnotify_provider_circuit_open", provider=primary) == 0
    assert (
        worker_metric(
            routed,
            "govnotify_provider_failovers_total",
            flow="callback_notice",
            from_provider=primary,
            to_provider=fallback,
        )
        == 0
    )
    assert (
        worker_metric(
            routed, "govnotify_provider_rate_limited_total", provider=primary, scope=scope
        )
        == 1
    )


def test_a_recipients_daily_limit_holds_the_message_until_the_next_day(
    settings: Settings, pipeline: Pipeline, twilio: FakeTwilio, gateway: FakeSmsGateway
) -> None:
    # Given: the gateway answers that this number has had its messages for today (the
    # carrier's daily limit per recipient), on a pipeline whose clock reads 10:00
    routes = {"default": ["gateway", "twilio"]}
    routed = with_providers(settings, twilio, gateway, sms_routes=routes)
    gateway.fail_next(1, "isv.DAY_LIMIT_CONTROL")
    pipeline.set_env(GOVNOTIFY_NOW="2026-12-07T10:00:00+08:00")
    start(pipeline, routed)

    # When
    nid = queue_sms(routed, flow="callback_notice", to=mobile(8), body=BODY)

    # Then: held until the centre's next day, as a job in PostgreSQL, not retried today and
    # never sent through Twilio round the limit
    def held() -> list[ScheduledJob]:
        with session(routed) as s:
            return list(
                s.execute(
                    select(ScheduledJob).where(ScheduledJob.key.startswith(f"deliver:{nid}:"))
                ).scalars()
            )

    wait_until(lambda: len(held()) == 1, 30, message="the held delivery was not scheduled")
    tomorrow = dt.datetime(2026, 12, 8, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert held()[0].run_at == tomorrow
    row = notification(routed, nid)
    assert (row.status, row.not_before, row.attempts) == ("created", tomorrow, 1)
    assert (gateway.attempts, twilio.attempts) == (1, 0)
    assert (
        worker_metric(
            routed,
            "govnotify_notifications_deferred_total",
            flow="callback_notice",
            reason="recipient_daily_limit",
        )
        == 1
    )


def test_timeouts_never_fail_over_but_open_the_circuit(
    settings: Settings, pipeline: Pipeline, twilio: FakeTwilio, gateway: FakeSmsGateway
) -> None:
    # Given: the gateway primary, taking every message and never answering in time
    routed = with_providers(
        settings, twilio, gateway, sms_routes={"default": ["gateway", "twilio"]}
    )
    gateway.fail_all("timeout")
    start(pipeline, routed)

    # When: three messages time out at the gateway
    timed_out = [queue_sms(routed, flow="green_channel", to=mobile(n), body=BODY) for n in range(3)]
    wait_until(lambda: len(gateway.messages) == 3, 30, message="gateway did not get them")
    wait_until(
        lambda: all(
            (notification(routed, nid).status_reason or "").startswith("provider timeout")
            for nid in timed_out
        ),
        30,
        message="timeouts were not recorded",
    )

    # Then: left `sending` for the sweep (the gateway has them), never sent again on Twilio
    for nid in timed_out:
        row = notification(routed, nid)
        assert row.status == "sending"
        assert row.attempts == 1
    assert twilio.attempts == 0
    assert sorted(m["out_id"] for m in gateway.messages) == sorted(timed_out)

    # When: the next messages, with the gateway's circuit open
    during = [
        queue_sms(routed, flow="green_channel", to=mobile(10 + n), body=BODY) for n in range(2)
    ]
    wait_until(lambda: settled(routed, during), 30, message="messages during the outage")

    # Then: straight to Twilio, without waiting on the gateway
    assert {notification(routed, nid).provider for nid in during} == {"twilio"}
    assert len(gateway.messages) == 3
    assert worker_metric(routed, "govnotify_provider_circuit_open", provider="gateway") == 1

    # When: the gateway answers again, and the cool-down passes
    gateway.recover()
    back = send_until_it_reaches(routed, "gateway", "green_channel")

    # Then
    assert notification(routed, back).provider == "gateway"
    assert worker_metric(routed, "govnotify_provider_circuit_open", provider="gateway") == 0


@pytest.mark.parametrize(
    ("primary", "failure", "reason"),
    [
        ("twilio", (400, 21211), "invalid_number"),
        ("twilio", (400, 21610), "unsubscribed"),
        ("gateway", "isv.MOBILE_NUMBER_ILLEGAL", "invalid_number"),
        ("gateway", "isv.BLACK_KEY_CONTROL_LIMIT", "unsubscribed"),
    ],
)
def test_a_permanent_failure_is_never_retried_on_either_provider(
    settings: Settings,
    pipeline: Pipeline,
    twilio: FakeTwilio,
    gateway: FakeSmsGateway,
    primary: str,
    failure: tuple[int, int] | str,
    reason: str,
) -> None:
    # Given
    fallback = "gateway" if primary == "twilio" else "twilio"
    routed = with_providers(settings, twilio, gateway, sms_routes={"default": [primary, fallback]})
    bad = mobile(666)
    if isinstance(failure, tuple):
        twilio.fail_number(bad, *failure)
    else:
        gateway.fail_number(bad, failure)
    start(pipeline, routed)

    # When
    nid = queue_sms(routed, flow="callback_notice", to=bad, body=BODY, category="callbacks")
    wait_until(lambda: settled(routed, [nid]), 30, message="did not settle")
    # a later message to a good number proves the worker is past it
    ok = queue_sms(routed, flow="callback_notice", to=mobile(1), body=BODY)
    wait_until(lambda: settled(routed, [ok]), 30, message="did not settle")

    # Then: exactly one request in total, at the primary
    row = notification(routed, nid)
    assert (row.status, row.provider, row.attempts) == ("permanent-failure", primary, 1)
    assert reason in (row.status_reason or "")
    bad_requests = {
        "twilio": twilio.attempts - len([m for m in twilio.messages if m["to"] != bad]),
        "gateway": gateway.attempts - len([m for m in gateway.messages if m["phone"] != bad]),
    }
    assert bad_requests == {primary: 1, fallback: 0}


def test_each_flow_takes_its_own_route_and_the_gateway_sends_by_template(
    settings: Settings, pipeline: Pipeline, twilio: FakeTwilio, gateway: FakeSmsGateway
) -> None:
    # Given: the green channel and rectification prefer the gateway, everything else Twilio
    routed = with_providers(
        settings,
        twilio,
        gateway,
        sms_routes={
            "default": ["twilio", "gateway"],
            "green_channel": ["gateway", "twilio"],
            "rectification": ["gateway"],
        },
    )
    start(pipeline, routed)
    params = {"department": "税务局", "service_item": "个税汇算", "outcome": "已整改"}

    # When
    green = queue_sms(
        routed, flow="green_channel", to=mobile(1), body="【长安政务】绿色通道：请优先接待。"
    )
    rect = queue_sms(
        routed,
        flow="rectification",
        to=mobile(2),
        body="【长安政务】您对税务局「个税汇算」的评价已处理：已整改",
        category="rectification",
        template="rectification_closed",
        params=params,
    )
    survey = queue_sms(routed, flow="callback_notice", to=mobile(3), body=BODY, category="surveys")
    wait_until(lambda: settled(routed, [green, rect, survey]), 30, message="did not settle")

    # Then: each on its flow's primary
    providers = {nid: notification(routed, nid).provider for nid in (green, rect, survey)}
    assert providers == {green: "gateway", rect: "gateway", survey: "twilio"}
    by_out_id = {m["out_id"]: m for m in gateway.messages}
    # the green-channel alert has no template: the generic one, our signature not doubled
    assert by_out_id[green]["template_id"] == "SMS_GENERIC"
    assert by_out_id[green]["content"] == "【长安政务】绿色通道：请优先接待。"
    # the rectification notice goes by its approved template, with the flow's parameters
    assert by_out_id[rect]["template_id"] == "SMS_RECT_01"
    assert by_out_id[rect]["params"] == params
    assert by_out_id[rect]["content"] == "【长安政务】您对税务局「个税汇算」的评价已处理：已整改"
    assert notification(routed, rect).provider_ref == by_out_id[rect]["biz_id"]
    assert [m["to"] for m in twilio.messages] == [mobile(3)]
    assert gateway.bad_signatures == 0
