"""Separate queues: a storm of delivery retries never starves first deliveries.

Transient failures leave the flow's queue and go to ``<ns>.delivery-retry`` (lowest priority),
so a provider refusing many numbers for a while only fills the retry queue. The worker runs as a
real process with two threads; the retry storm is real traffic to the loopback Twilio fake.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.settings import Settings
from producers.rabbitmq import queue_depth
from schemas.models import FINAL_STATUSES
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, metric, scrape, wait_until
from tests.support.delivery import notification, queue_sms, settled

pytestmark = pytest.mark.integration

BODY = "【长安政务】您的办件已办结，请到窗口领取。退订请致电12345"
STORM = 30


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


def test_a_retry_storm_does_not_delay_first_deliveries(
    settings: Settings, pipeline: Pipeline, twilio: FakeTwilio
) -> None:
    # Given: Twilio refusing 30 numbers with 503 for as long as the test runs, retries spaced
    # 20–100 ms so the retry queue is never empty, and no circuit (one provider only)
    storm_numbers = [f"+86139{n:08d}" for n in range(STORM)]
    for to in storm_numbers:
        twilio.fail_number(to, 503, 20500)
    routed = settings.model_copy(
        update={
            "twilio_account_sid": twilio.account_sid,
            "twilio_auth_token": twilio.auth_token,
            "twilio_from": "+15017122661",
            "twilio_api_base": twilio.base_url,
            "quiet_hours": "off",
            "sms_daily_cap": 0,
            "delivery_max_retries": 50,
            "delivery_min_backoff_ms": 20,
            "delivery_max_backoff_ms": 100,
            "circuit_min_requests": 100_000,
            "worker_threads": 2,
        }
    )
    pipeline.set_env(**routed.env())
    pipeline.worker()
    pipeline.scheduler()
    storm = [queue_sms(routed, flow="survey", to=to, body=BODY) for to in storm_numbers]
    wait_until(
        lambda: twilio.attempts >= 3 * STORM, 60, message="the retry storm did not get going"
    )

    # When: fresh messages arrive in the middle of the storm
    fresh = [
        queue_sms(routed, flow="callback_notice", to=f"+86138{n:08d}", body=BODY) for n in range(5)
    ]
    wait_until(lambda: settled(routed, fresh), 30, message="fresh messages were starved")

    # Then: every fresh message went out on its first attempt while the storm was still raging
    assert [(notification(routed, n).status, notification(routed, n).attempts) for n in fresh] == [
        ("sent", 1)
    ] * 5
    assert not any(notification(routed, n).status in FINAL_STATUSES for n in storm)
    samples = scrape(routed.worker_metrics_port)
    retry_queue = routed.queue("delivery-retry")
    assert metric(samples, "dramatiq_message_retries_total", queue_name=retry_queue) > 0
    # The first deliveries' queue held no retries: every retry was on the retry queue.
    assert (
        metric(samples, "dramatiq_message_retries_total", queue_name=routed.queue("delivery")) == 0
    )
    assert queue_depth(routed, routed.queue("delivery")) == 0
