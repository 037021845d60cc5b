"""The 08:00 release, measured: reminders held overnight by the quiet hours go out at the
configured send rate, none lost, none early (issue 13).

The night: 500 licenses due for their 30-day reminder reach the real relay, stream and worker
at 07:00 Asia/Shanghai, inside the quiet hours (21:00-08:00); each reminder is created and
deferred to 08:00 with its slot of the release spread. The morning: the worker and the scheduler
start again on the pipeline clock a little before 08:00 (the night has passed), and the loopback
Twilio notes when each message arrives.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, or_, select

from infra.db import session
from producers.generator import license_event
from producers.rabbitmq import Publisher
from schemas.models import Notification, ScheduledJob
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, count_rows, wait_until
from tests.support.cases import CST

pytestmark = pytest.mark.integration

#: How many reminders are held overnight, and the send rate they must keep: Twilio's declared
#: 50 a second, so the release is paced (not limited by the worker's own speed) for ~10 s, long
#: enough for every one-second window, the spacing and the span to be measured on 500 sends.
N = 500
RATE = 50.0
#: The night (inside the quiet hours) and the release.
TODAY = dt.date(2026, 11, 26)
NIGHT = dt.datetime(2026, 11, 26, 7, 0, tzinfo=CST)
RELEASE = dt.datetime(2026, 11, 26, 8, 0, tzinfo=CST)
#: Real seconds between the morning processes' start and 08:00 on their clock: time to be up
#: (~3 s with a suite beside; the rest is for a CI machine busier than that).
MORNING_MARGIN_S = 10.0


class ClockedTwilio(FakeTwilio):
    """The loopback Twilio, noting the real time each accepted message arrived."""

    def __init__(self) -> None:
        super().__init__()
        #: (to, Unix time) of every accepted create, in arrival order.
        self.arrivals: list[tuple[str, float]] = []

    def _create(self, form: dict[str, str]) -> tuple[int, dict[str, Any], float, bool]:
        answer = super()._create(form)
        if answer[0] == 201:
            with self._cond:
                self.arrivals.append((form.get("To", ""), time.time()))
        return answer


def mobile(i: int) -> str:
    return f"137{i:08d}"


def most_in_one_second(times: list[float]) -> int:
    """The most arrivals in any window of one second (sliding, half-open)."""
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_reminders_held_overnight_go_out_at_the_send_rate_none_lost_none_early(
    settings, pipeline: Pipeline
) -> None:
    # Given: Twilio paced at RATE for every worker together, and the pipeline at 07:00
    with ClockedTwilio() as twilio:
        pipeline.set_env(
            GOVNOTIFY_TWILIO_ACCOUNT_SID=twilio.account_sid,
            GOVNOTIFY_TWILIO_AUTH_TOKEN=twilio.auth_token,
            GOVNOTIFY_TWILIO_FROM="+15017122661",
            GOVNOTIFY_TWILIO_API_BASE=twilio.base_url,
            GOVNOTIFY_SEND_RATES=f"twilio={RATE:g}",
            GOVNOTIFY_NOW=NIGHT.isoformat(),
        )
        pipeline.relay()
        pipeline.stream()
        night_worker = pipeline.worker()
        events = [
            license_event(
                "license.issued",
                f"LIC-R-{i:05d}",
                category="food_business",
                holder_mobile=mobile(i),
                issued_on=TODAY + dt.timedelta(days=20 - 365 * 5),
                expires_on=TODAY + dt.timedelta(days=20),
                occurred_at=NIGHT - dt.timedelta(days=1),
            )
            for i in range(N)
        ]

        # When: the licenses arrive in the night
        night_started = time.monotonic()
        with Publisher.from_settings(settings) as publisher:
            outcomes = publisher.publish_many(
                (e.to_json_bytes(), e.event_type, e.event_id) for e in events
            )
        assert all(ok for ok, _ in outcomes)

        # Then: every reminder is created and held until 08:00, none sent
        def held() -> int:
            return count_rows(
                settings,
                Notification,
                Notification.status == "created",
                Notification.status_reason == "quiet hours",
            )

        def scheduled() -> int:
            return count_rows(settings, ScheduledJob)

        # (a row is marked held when its claim commits, its release job right after: both)
        wait_until(
            lambda: held() == N and scheduled() == N,
            120,
            interval=0.2,
            message=lambda: (
                f"{held()} of {N} held, {scheduled()} scheduled:\n" + night_worker.log_tail()
            ),
        )
        assert twilio.arrivals == []
        night_s = time.monotonic() - night_started
        with session(settings) as s:
            first, last, jobs = s.execute(
                select(func.min(ScheduledJob.run_at), func.max(ScheduledJob.run_at), func.count())
            ).one()
        # … each with its slot of the release: from 08:00, one interval apart
        assert jobs == N
        assert first.astimezone(CST) == RELEASE
        assert (last - first).total_seconds() == pytest.approx((N - 1) / RATE, abs=1e-3)
        # … and each held delivery names the upstream event that caused its reminder
        with session(settings) as s:
            unnamed = s.execute(
                select(func.count())
                .select_from(ScheduledJob)
                .join(Notification, ScheduledJob.payload.contains(Notification.id))
                .where(
                    or_(
                        ScheduledJob.event_id.is_(None),
                        ScheduledJob.event_id != Notification.event_id,
                    )
                )
            ).scalar_one()
        assert unnamed == 0

        # When: the night is over; the worker and the scheduler start a little before 08:00
        for child in list(pipeline.children):
            child.stop()
        epoch = time.time() + MORNING_MARGIN_S  # when 08:00 comes on the pipeline clock
        pipeline.set_env(GOVNOTIFY_NOW=RELEASE.isoformat(), GOVNOTIFY_NOW_EPOCH=repr(epoch))
        pipeline.worker(name="morning-worker")
        pipeline.scheduler()
        twilio.wait_for(N, timeout=N / RATE + 90)
        wait_until(
            lambda: count_rows(settings, Notification, Notification.status == "sent") == N,
            60,
            message="rows did not all become sent",
        )

        # Then: every reminder reached Twilio exactly once, none before 08:00 on the pipeline
        # clock
        assert Counter(to for to, _ in twilio.arrivals) == {f"+86{mobile(i)}": 1 for i in range(N)}
        times = [at for _, at in twilio.arrivals]
        early = [at - epoch for at in times if at < epoch]
        assert early == [], f"{len(early)} sent before 08:00"
        # … at no more than the rate in any second (a few more for the network's jitter: the
        # pace is kept when a request starts, this is when it arrived), and the release took at
        # least as long as the rate allows
        most = most_in_one_second(times)
        span = max(times) - min(times)
        assert most <= RATE * 1.05 + 3, f"{most} in one second"
        assert span >= (N - 1) / RATE - 0.1
        print(
            f"\n{N} held in {night_s:.1f} s; released: first {min(times) - epoch:.2f} s "
            f"after 08:00, span {span:.1f} s, "
            f"mean {(N - 1) / span:.1f}/s, most in one second {most} (rate {RATE:g}/s)"
        )
