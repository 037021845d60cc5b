"""Staff robots keep their own pace: each webhook of the directory a slot at a time, at its
declared 20 a minute (or ``GOVNOTIFY_SEND_RATES``), and a robot that says "too fast" holds every
sender back. Sends go to a loopback robot; the pacer's clock stands still and its waits are
recorded, not slept."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import load_settings
from notifiers.errors import RateLimitedError
from notifiers.pacing import LocalPacer
from notifiers.staff import StaffMessage
from notifiers.staff.webhook import ROBOT_LIMIT_WINDOW_S
from schemas.staff import Staff
from tests.fakes.webhook_server import FakeWebhook
from workers.context import WorkerContext, using
from workers.staff import notify_staff

HALL = [Staff(staff_id="S001", name="王建国", mobile="+8613800130001", webhook="hall-robot")]
STATION = [Staff(staff_id="S003", name="刘娟", mobile="+8613800130004", webhook="station-robot")]
PORTAL = [Staff(staff_id="S900", name="门户", mobile="+8613800130099", webhook="staff-portal")]


class StoppedClock:
    def utcnow(self) -> dt.datetime:
        return dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


def alert(n: int) -> StaffMessage:
    return StaffMessage(
        message_id=f"gc-{n}",
        kind="green_channel_alert",
        title="绿色通道：高龄老人到厅",
        text="申请人已在长安区政务服务中心取号，请立即接待。",
        data={"case_id": f"CASE-{n}"},
    )


@pytest.fixture
def robots() -> Iterator[FakeWebhook]:
    with FakeWebhook() as fake:
        yield fake


def context(robots: FakeWebhook, tmp_path: Path, **rates: float) -> tuple[WorkerContext, list]:
    """A worker context on the robots, whose pacer records its sleeps."""
    settings = load_settings(
        data_dir=tmp_path / "data",
        staff_directory=robots.staff_directory(tmp_path / "staff.json"),
        send_rates=rates,
    )
    ctx = WorkerContext(settings)
    slept: list[float] = []
    ctx.pacer = LocalPacer(StoppedClock(), sleep=slept.append)  # type: ignore[arg-type]
    return ctx, slept


def test_each_robot_waits_for_its_own_slot_at_20_a_minute(
    robots: FakeWebhook, tmp_path: Path
) -> None:
    # Given: the bundled directory's WeCom robots, at their declared 20 a minute
    ctx, slept = context(robots, tmp_path)

    # When: three alerts to the hall robot, one to a station's robot
    with using(ctx):
        for n in range(3):
            notify_staff(HALL, alert(n), flow="green_channel")
        notify_staff(STATION, alert(9), flow="green_channel")

    # Then: the hall robot's second and third waited 3 s and 6 s; the station's went at once
    assert slept == pytest.approx([3.0, 6.0])
    assert len(robots.wait_for(4)) == 4


def test_the_setting_overrides_a_robots_rate(robots: FakeWebhook, tmp_path: Path) -> None:
    # Given: webhooks at 2 a second
    ctx, slept = context(robots, tmp_path, webhook=2.0)

    # When: three to a robot
    with using(ctx):
        for n in range(3):
            notify_staff(HALL, alert(n), flow="green_channel")

    # Then
    assert slept == pytest.approx([0.5, 1.0])


def test_a_json_webhook_is_not_paced_unless_configured(robots: FakeWebhook, tmp_path: Path) -> None:
    # Given: the centre's portal, a "json" webhook, and no rate configured
    ctx, slept = context(robots, tmp_path)

    # When
    with using(ctx):
        for n in range(3):
            notify_staff(PORTAL, alert(n), flow="green_channel")

    # Then
    assert slept == []
    assert len(robots.wait_for(3)) == 3


def test_a_robot_that_says_too_fast_holds_every_sender_back_for_its_minute(
    robots: FakeWebhook, tmp_path: Path
) -> None:
    # Given: the hall robot refuses the next message (WeCom 45009)
    ctx, _ = context(robots, tmp_path)
    robots.errcode_next(1, 45009)

    # When
    with using(ctx), pytest.raises(RateLimitedError):
        notify_staff(HALL, alert(1), flow="green_channel")

    # Then: the next slot of that robot, for anyone, is its minute away
    assert ctx.pacer.take("staff:hall-robot", 3.0) == pytest.approx(ROBOT_LIMIT_WINDOW_S)
    assert ctx.pacer.take("staff:station-robot", 3.0) == 0.0
