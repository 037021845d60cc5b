"""``govnotify top --once`` against a real running pipeline, and with everything down."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.services import free_port
from infra.settings import Settings, load_settings
from producers.generator import bad_events, license_event
from producers.rabbitmq import Publisher
from schemas.models import Notification
from tests.support import (
    Pipeline,
    count_rows,
    env_for,
    free_ports,
    metric,
    publish,
    scrape,
    wait_until,
)

TODAY = dt.date(2026, 11, 26)
AT = dt.datetime(2026, 11, 20, 9, tzinfo=dt.UTC)


def top_once(env: dict[str, str], interval: float, *, status: int = 0) -> str:
    """Run ``govnotify top --once``; its output (it must exit ``status``: 0 when everything is
    up, 3 when something is down)."""
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "top", "--once", "--interval", str(interval)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == status, result.stdout + result.stderr
    return result.stdout


def row(output: str, label: str) -> list[str]:
    """The cells after ``label`` on the first line that starts with it."""
    for line in output.splitlines():
        if line.strip().startswith(label):
            return line.strip()[len(label) :].split()
    raise AssertionError(f"no line {label!r} in:\n{output}")


def issued(license_id: str, days_left: int) -> object:
    expires = TODAY + dt.timedelta(days=days_left)
    return license_event(
        "license.issued",
        license_id,
        category="food_business",
        holder_mobile="13800000031",
        issued_on=expires - dt.timedelta(days=365 * 5),
        expires_on=expires,
        occurred_at=AT,
    )


def test_top_with_everything_down_says_down_and_exits_cleanly(tmp_path: Path) -> None:
    # Given settings where nothing answers: no component, no RabbitMQ, no database
    nothing = load_settings(
        namespace="tdown",
        data_dir=tmp_path,
        amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing",
        **free_ports(),
    )

    # When top prints one frame (exit 3: a service is unreachable)
    output = top_once(env_for(nothing), interval=0, status=3)

    # Then every component is down, and so are RabbitMQ and the database, without a traceback
    for component in ("relay", "stream", "worker", "scheduler", "api"):
        assert row(output, component)[1] == "down", output
    assert "RabbitMQ down" in output
    assert "database down" in output
    assert "Traceback" not in output


@pytest.mark.integration
def test_top_shows_the_running_pipeline_and_its_numbers(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given the whole pipeline (SMS to the sandbox), and a known set of events: three licenses
    # (two due for a reminder today, one not yet) and two bad events
    pipeline.set_env(GOVNOTIFY_NOW=f"{TODAY.isoformat()}T10:00:00+08:00")
    pipeline.all()
    publish(settings, [issued("LIC-TOP-A", 20), issued("LIC-TOP-B", 60), issued("LIC-TOP-C", 5)])
    bad = dict(bad_events(TODAY))
    with Publisher.from_settings(settings) as p:
        p.publish_raw(bad["malformed_json"], "license.issued")
        p.publish_raw(bad["unknown_type"], "license.issued")

    # When the two reminders went out and the scheduler's gauges saw the dead letters
    wait_until(
        lambda: count_rows(settings, Notification, Notification.status == "delivered") == 2,
        90,
        message="the two reminders were not delivered",
    )
    wait_until(
        lambda: metric(scrape(settings.scheduler_metrics_port), "govnotify_dead_letters_open") == 2,
        30,
    )
    wait_until(
        lambda: metric(scrape(settings.stream_metrics_port), "govnotify_stream_events_total") == 3,
        30,
    )
    # (the stream measures its lag every 5 s)
    wait_until(
        lambda: (
            metric(scrape(settings.stream_metrics_port), "govnotify_kafka_consumer_lag_trustworthy")
            == 0
            and "govnotify_kafka_consumer_lag_messages{"
            in "".join(scrape(settings.stream_metrics_port))
        ),
        30,
    )
    # (exit 3: the api, not started, is down)
    output = top_once(pipeline.env, interval=1, status=3)

    # Then each running component is up and ready; the api, not started, is down
    for component in ("relay", "stream", "worker", "scheduler"):
        assert row(output, component)[1:3] == ["up", "yes"], output
    assert row(output, "api")[1] == "down"
    # and the event numbers are the ones published
    assert row(output, "received by the relay")[0] == "5"
    assert row(output, "rejected (dead letters)")[0] == "2"
    assert row(output, "written to Kafka")[0] == "3"
    assert row(output, "processed by the stream")[0] == "3"
    assert row(output, "relay queue (ready)")[0] == "0"
    # and the notifications per flow and status, rates over the interval (nothing new: 0)
    assert row(output, "renewal")[:3] == ["delivered", "2", "0.0/s"]
    providers = output.split("providers", 1)[1].split("service centre", 1)[0]
    assert "closed" in providers and "open" not in providers
    # and the consumer lag per topic, caught up
    assert row(output, settings.topic("licenses"))[:2] == ["0", "4"]
    # and the work queues and what waits in the database
    assert row(output, settings.queue("delivery"))[0] == "0"
    assert row(output, f"{settings.queue('reminders')} (jobs)")[0] == "0"
    assert row(output, "dead letters open")[0] == "2"
    assert row(output, "green-channel alerts unacknowledged")[0] == "0"
    # and the latest dead letters, with reason and stage but no content
    letters = [line for line in output.splitlines() if re.search(r"\bingest\b", line)]
    assert sorted(line.split()[3] for line in letters) == ["malformed_json", "unknown_type"]
    assert "13800000031" not in output
