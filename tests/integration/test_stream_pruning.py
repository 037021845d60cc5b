"""Stream tables forget what no rule needs any more, and stay forgotten after a restart.

On the real RabbitMQ and Tansu: the tombstones go to the tables' changelogs, so a stream that
recovers its tables from Kafka does not bring the forgotten entries back.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import urllib.request

import pytest

from infra.settings import Settings
from producers.generator import license_event
from schemas.events import Event, make_event
from tests.support import Pipeline, metric, publish, scrape, wait_until

pytestmark = pytest.mark.integration

TODAY = dt.date(2026, 11, 26)
NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))


def issued(license_id: str, expires_on: dt.date) -> Event:
    return license_event(
        "license.issued",
        license_id,
        category="food_business",
        issued_on=expires_on - dt.timedelta(days=365 * 5),
        expires_on=expires_on,
        occurred_at=NOW - dt.timedelta(days=400),
    )


def completed(case_id: str, at: dt.datetime) -> Event:
    payload = {
        "case_id": case_id,
        "service_item": "食品经营许可证核发",
        "department": "市场监督管理局",
        "service_point": {
            "id": "SC-CHANGAN",
            "name": "长安区政务服务中心",
            "level": "service_centre",
        },
        "applicant": {"kind": "citizen", "name": "王秀英", "mobile": "13900000401"},
        "key_project": False,
        "submitted_at": (at - dt.timedelta(hours=1)).isoformat(),
        "completed_at": at.isoformat(),
    }
    return make_event("case.completed", payload, source="case-system", occurred_at=at)


def table_figures(settings: Settings) -> dict[str, tuple[float, float]]:
    """(entries, pruned) per table, from the stream's /metrics ({} while it is not up)."""
    try:
        samples = scrape(settings.stream_metrics_port)
    except OSError:
        return {}
    return {
        table: (
            metric(samples, "govnotify_stream_table_entries", table=table),
            metric(samples, "govnotify_stream_table_pruned_total", table=table),
        )
        for table in ("case-state",)
    }


def ready(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{settings.stream_metrics_port}/readyz", timeout=5
        ) as response:
            return response.status == 200
    except OSError:
        return False


def applied(settings: Settings) -> float:
    try:
        return metric(scrape(settings.stream_metrics_port), "govnotify_stream_events_total")
    except OSError:
        return 0


def test_old_cases_are_forgotten_for_good(settings: Settings, pipeline: Pipeline) -> None:
    # Given a stream that never scans holds a case with no event for 100 days and a case
    # completed today (licenses are no stream state: the registry is in PostgreSQL)
    pipeline.set_env(GOVNOTIFY_NOW=NOW.isoformat(), GOVNOTIFY_STREAM_SCAN_INTERVAL_S="3600")
    pipeline.relay()
    stream = pipeline.stream()
    publish(
        settings,
        [
            completed("C-OLD", NOW - dt.timedelta(days=100)),
            completed("C-NEW", NOW - dt.timedelta(hours=1)),
        ],
    )
    wait_until(
        lambda: applied(settings) >= 2,
        90,
        message=lambda: "the stream did not apply the events:\n" + stream.log_tail(),
    )
    stream.stop()

    # When the stream restarts with its daily scan due
    pipeline.set_env(GOVNOTIFY_STREAM_SCAN_INTERVAL_S="0.5")
    stream = pipeline.stream(name="stream-pruning")

    # Then the old case is forgotten; the other is kept
    expected = {"case-state": (1, 1)}
    wait_until(
        lambda: table_figures(settings) == expected,
        90,
        message=lambda: f"{table_figures(settings)}\n{stream.log_tail()}",
    )

    # When it restarts again and recovers its tables from the changelogs
    stream.stop()
    stream = pipeline.stream(name="stream-recovered")

    # Then, its tables recovered, the forgotten entries did not come back: nothing to forget
    wait_until(
        lambda: ready(settings),
        90,
        message=lambda: "the stream did not recover:\n" + stream.log_tail(),
    )
    expected = {"case-state": (1, 0)}
    wait_until(
        lambda: table_figures(settings) == expected,
        30,
        message=lambda: f"{table_figures(settings)}\n{stream.log_tail()}",
    )


def test_a_stream_scraped_from_its_start_still_stops_by_itself_on_sigterm(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given a stream whose /metrics is scraped from the moment it starts (Prometheus does), and
    # which applied an event
    pipeline.set_env(GOVNOTIFY_NOW=NOW.isoformat(), GOVNOTIFY_STREAM_SCAN_INTERVAL_S="0.5")
    pipeline.relay()
    stream = pipeline.stream()

    def scraped_and_ready() -> bool:
        applied(settings)  # a /metrics scrape, answered or not
        return ready(settings)

    wait_until(scraped_and_ready, 90, interval=0.01, message=lambda: stream.log_tail())
    publish(settings, [issued("LIC-LIVE", TODAY + dt.timedelta(days=200))])
    wait_until(lambda: applied(settings) >= 1, 60, message=lambda: stream.log_tail())

    # When it is asked to stop
    stream.popen.send_signal(signal.SIGTERM)

    # Then it exits by itself, having closed its event loop (a table bound to the metrics
    # thread's loop once made it hang until SIGKILL, and rejoin the group late on restart)
    try:
        code = stream.popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the stream did not exit within 30 s of SIGTERM:\n" + stream.log_tail())
    assert code == 0, stream.log_tail()
    assert "Closing event loop" in stream.log_path.read_text(encoding="utf-8")
