"""One send rate shared by every worker process: slots taken from the ``send_pace`` table on the
real PostgreSQL by separate OS processes."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.clock import Clock
from infra.db import engine_for
from infra.settings import Settings
from notifiers.pacing import DatabasePacer
from tests.support import env_for

pytestmark = pytest.mark.integration

#: A process taking slots: waits for the go file, takes N slots of one key on a clock stopped at
#: one instant (so every slot is that instant plus the wait it was given, exactly), and prints
#: the waits as JSON.
TAKER = """
import datetime as dt, json, sys, time
from pathlib import Path
from infra.settings import get_settings
from notifiers.pacing import DatabasePacer

class Stopped:
    def utcnow(self):
        return dt.datetime.fromtimestamp(float(sys.argv[3]), dt.UTC)

pacer = DatabasePacer(get_settings(), Stopped())
pacer.take("warm-up", 1.0)  # connect before the start, so both start together
go = Path(sys.argv[1])
print("ready", flush=True)
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
waits = [pacer.take("sms:shared", float(sys.argv[4])) for _ in range(int(sys.argv[2]))]
print(json.dumps(waits), flush=True)
"""


def test_two_processes_share_one_pace_every_slot_distinct_and_an_interval_apart(
    settings: Settings, tmp_path: Path
) -> None:
    # Given: two processes on one database, each about to take 300 slots of one sender at
    # 200 a second, on clocks stopped at the same instant
    n, interval, at = 300, 0.005, time.time()
    go = tmp_path / "go"
    takers = [
        subprocess.Popen(
            [sys.executable, "-c", TAKER, str(go), str(n), repr(at), repr(interval)],
            env=env_for(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for taker in takers:
            assert taker.stdout is not None
            assert taker.stdout.readline().strip() == "ready", taker.stderr.read()  # type: ignore[union-attr]

        # When: both start at once
        go.touch()
        outputs = [taker.communicate(timeout=120) for taker in takers]
    finally:
        for taker in takers:
            if taker.poll() is None:
                taker.kill()
                taker.wait()

    # Then: 600 slots, exactly one per interval from the instant on, none taken twice
    waits = [json.loads(out) for out, _ in outputs]
    slots = sorted(round(w / interval) for process in waits for w in process)
    assert slots == list(range(2 * n))
    # (Unix seconds as doubles: a slot may be off by a few microseconds of rounding, no more)
    gaps = [b - a for a, b in itertools.pairwise(sorted(w for p in waits for w in p))]
    assert min(gaps) >= interval - 1e-6
    # … and the two really took them at the same time: each got slots among the other's
    firsts = [set(round(w / interval) for w in process) for process in waits]
    assert min(firsts[0]) < max(firsts[1]) and min(firsts[1]) < max(firsts[0])
    # … within one process, each next slot is at least an interval after its last
    for process in waits:
        assert all(b - a >= interval - 1e-6 for a, b in itertools.pairwise(process))


def test_a_hold_by_one_process_holds_back_the_other(settings: Settings) -> None:
    # Given: two pacers on engines of their own (two processes' worth), on the real clock
    clock = Clock.from_settings(settings)
    engines = [engine_for(settings.resolved_database_url, pool_size=1) for _ in range(2)]
    try:
        first, second = (DatabasePacer(settings, clock, engine=e) for e in engines)
        first.take("sms:gateway", 0.01)

        # When: the provider tells the first to slow down for 30 s
        before = first.now()
        first.hold("sms:gateway", 30.0)
        wait = second.take("sms:gateway", 0.01)
        after = second.now()

        # Then: the second's next slot is those 30 s after the hold
        assert before + 30.0 - after <= wait <= 30.0
    finally:
        for engine in engines:
            engine.dispose()
