"""``govnotify demo`` measures the green-channel latency on one clock.

The summary subtracts a case's ``submitted_at`` (stamped by the demo as it publishes) from the
``sent_at`` the worker stamps on its own clock. A demo that stamped on a clock of its own (a
monotonic origin taken when it started the processes, processes without
``GOVNOTIFY_NOW_EPOCH``) printed a negative median (-0.23 s); one on the wall clock would be
days off, the processes' clock being pinned to 10:00 of the demo's day.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.cli.demo import _demo_settings, alert_latencies, demo_now
from infra.settings import load_settings
from schemas.models import StaffAlert

ROOT = Path(__file__).resolve().parents[3]
#: What a component process reads as now: its settings from the environment, its clock.
CHILD = (
    "from infra.settings import get_settings\n"
    "from infra.clock import Clock\n"
    "print(Clock.from_settings(get_settings()).utcnow().isoformat())\n"
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GOVNOTIFY_"):
            monkeypatch.delenv(name)


def test_the_demo_and_a_process_started_later_read_one_clock(tmp_path: Path) -> None:
    # Given the demo's settings, made (and so its clock pinned) a while before anything reads it
    s = _demo_settings(load_settings(data_dir=tmp_path), "clock01")
    assert s.now is not None
    assert s.now_epoch is not None, "processes started apart share a clock only through it"
    time.sleep(0.5)
    slack = dt.timedelta(milliseconds=5)

    def pinned(wall: float) -> dt.datetime:
        """The one clock: GOVNOTIFY_NOW when the wall clock read GOVNOTIFY_NOW_EPOCH."""
        return s.now + dt.timedelta(seconds=wall - s.now_epoch)

    # When the demo stamps an event
    w0 = time.time()
    stamp = demo_now(s)
    w1 = time.time()

    # Then the stamp is on that clock (not on one starting at the demo's first reading, which
    # would be half a second behind here, nor on the wall clock, days away)
    assert pinned(w0) - slack <= stamp <= pinned(w1) + slack

    # When a component process is started with the demo's environment and reads its now
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVNOTIFY_")}
    w0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={**env, **s.env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    w1 = time.time()
    child = dt.datetime.fromisoformat(out.stdout.strip())

    # Then it reads the same clock, however late it started: a send it stamps after an event the
    # demo stamped can never come out earlier than the event
    assert pinned(w0) - slack <= child <= pinned(w1) + slack


def _alert(event_at: dt.datetime, sent_at: dt.datetime | None) -> StaffAlert:
    return StaffAlert(
        idempotency_key=f"green:{event_at.isoformat()}:{sent_at}",
        case_id="C-1",
        service_point_id="SC-CHANGAN",
        special_groups="elderly",
        event_at=event_at,
        sent_at=sent_at,
    )


def test_alert_latencies_are_sent_minus_event_and_show_a_second_clock() -> None:
    # Given alerts stamped on one clock, one not sent yet, and one stamped on another clock
    t = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)
    alerts = [
        _alert(t, t + dt.timedelta(seconds=2)),
        _alert(t, t + dt.timedelta(milliseconds=500)),
        _alert(t, None),
        _alert(t.astimezone(dt.timezone(dt.timedelta(hours=8))), t + dt.timedelta(seconds=1)),
    ]

    # When the summary reads their latencies
    latencies = alert_latencies(alerts)

    # Then each is sent minus event in seconds, whatever the offset of the stamps, sorted, and
    # the unsent one is left out
    assert latencies == [0.5, 1.0, 2.0]
    # and a send stamped before its event is kept (negative), for the summary to flag it
    assert alert_latencies([_alert(t, t - dt.timedelta(seconds=0.23))]) == [-0.23]
