"""dramatiq's Prometheus middleware across worker processes: one /metrics, every process counted.

Each worker process writes its samples to the shared multiprocess folder that ``govnotify
worker`` clears on start; the exposition server (with /healthz and /readyz) reads them all. A
mistake here (prometheus_client imported before the folder is set, a folder not cleared) shows
as counts that cover one process, or stale counts from an earlier run.
"""

from __future__ import annotations

import pytest

from infra.settings import Settings
from tests.support import Pipeline, metric, scrape, wait_until
from tests.support.delivery import queue_sms, settled

pytestmark = pytest.mark.integration

BODY = "【长安政务】您的办件已办结，请到窗口领取。退订请致电12345"
N = 40


def test_two_worker_processes_report_every_message_once(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given: two worker processes of four threads each, on the sandbox notifier
    pipeline.set_env(GOVNOTIFY_QUIET_HOURS="off", GOVNOTIFY_SMS_DAILY_CAP="0")
    pipeline.worker("--processes", "2")
    pipeline.scheduler()

    # When: 40 notifications are delivered
    ids = [queue_sms(settings, flow="survey", to=f"+86138{n:08d}", body=BODY) for n in range(N)]
    wait_until(lambda: settled(settings, ids), 60, message="notifications did not settle")

    # Then: the one endpoint counts all 40 (whichever process sent each), nothing stale
    def counted() -> bool:
        samples = scrape(settings.worker_metrics_port)
        return metric(samples, "govnotify_notifications_total", status="delivered") == N

    try:
        wait_until(counted, 10)
    except TimeoutError:
        sent = {
            k: v
            for k, v in scrape(settings.worker_metrics_port).items()
            if k.startswith(("govnotify_notifications_total", "dramatiq_messages_total"))
        }
        pytest.fail(f"the worker's /metrics does not count every process: {sent}")
    samples = scrape(settings.worker_metrics_port)
    delivery = settings.queue("delivery")
    assert metric(samples, "dramatiq_messages_total", queue_name=delivery) == N
    assert metric(samples, "dramatiq_message_errors_total", queue_name=delivery) == 0
    assert metric(samples, "dramatiq_messages_inprogress", queue_name=delivery) == 0
    durations = [
        key
        for key, value in samples.items()
        if key.startswith("govnotify_provider_request_duration_seconds_count") and value > 0
    ]
    assert durations, "provider durations are missing from the shared registry"
