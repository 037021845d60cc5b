"""The per-citizen daily cap on renewal reminders end to end on the real services: the sixth SMS
of the day waits for 08:00 tomorrow."""

from __future__ import annotations

import datetime as dt

import pytest

from infra.settings import Settings
from schemas.models import Notification
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, count_rows, publish, wait_until
from tests.support.cases import CST, env, rows

pytestmark = pytest.mark.integration


def test_the_sixth_sms_of_the_day_to_one_citizen_waits_for_tomorrow(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given: six licenses of one holder, all due for a reminder today
    from producers.generator import license_event

    _webhooks, directory = hooks
    now = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    pipeline.set_env(**env(fake_twilio, directory, now))
    pipeline.all()
    events = [
        license_event(
            "license.issued",
            f"LIC-CAP-{i}",
            category="food_business",
            holder_mobile="13900000501",
            issued_on=dt.date(2021, 12, 16),
            expires_on=dt.date(2026, 12, 16),
            occurred_at=now,
        )
        for i in range(6)
    ]

    # When
    publish(settings, events)
    wait_until(
        lambda: (
            count_rows(settings, Notification) == 6
            and all(r.status == "sent" or r.not_before for r in rows(settings, Notification))
        ),
        60,
    )

    # Then: five were sent, the sixth is deferred to 08:00 tomorrow
    assert len(fake_twilio.messages) == 5
    (deferred,) = [r for r in rows(settings, Notification) if r.status != "sent"]
    assert deferred.status_reason == "daily cap"
    assert deferred.not_before.astimezone(CST) == dt.datetime(2026, 11, 27, 8, 0, tzinfo=CST)
