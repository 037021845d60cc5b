"""Run a benchmark as if the wall clock read a given local hour (Asia/Shanghai by default).

    python -m benchmarks.at_hour 23:00 [bench_pipeline] [--tz Asia/Shanghai]

Every process of the run (this one's child, its relay, stream, worker, Tansu's Python
neighbours) sees the wall clock moved by the same offset (``benchmarks/wallclock``); the
benchmarks pin the pipeline's clock at 10:00 of a fixed day (``benchmarks.common.BENCH_NOW``),
so the figures and counts must come out as at any other hour. A decision that still read the
wall clock (quiet hours 21:00-08:00 deferring the reminders the benchmark waits for) would show
here as a run that never settles or sends fewer SMS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

WALLCLOCK = Path(__file__).resolve().parent / "wallclock"


def offset_to(hour: dt.time, tz: ZoneInfo, now: float | None = None) -> float:
    """Seconds to add to the wall clock so that it reads ``hour`` (local) now, today or the
    next day, whichever is ahead."""
    real = dt.datetime.fromtimestamp(time.time() if now is None else now, tz)
    target = real.replace(hour=hour.hour, minute=hour.minute, second=0, microsecond=0)
    if target <= real:
        target += dt.timedelta(days=1)
    return (target - real).total_seconds()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("hour", help="HH:MM, local")
    p.add_argument("module", nargs="?", default="bench_pipeline", help="benchmarks.<module>")
    p.add_argument("--tz", default="Asia/Shanghai")
    args = p.parse_args()
    offset = offset_to(dt.time.fromisoformat(args.hour), ZoneInfo(args.tz))
    env = dict(os.environ)
    env["BENCH_WALL_OFFSET_S"] = f"{offset:.3f}"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(WALLCLOCK), str(WALLCLOCK.parents[1]), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    probe = "import datetime, zoneinfo; print(datetime.datetime.now(zoneinfo.ZoneInfo(%r)))"
    seen = subprocess.run(
        [sys.executable, "-c", probe % args.tz], env=env, capture_output=True, text=True
    ).stdout.strip()
    print(f"wall clock moved by {offset:+.0f}s: processes of this run read {seen} ({args.tz})")
    sys.stdout.flush()
    return subprocess.call([sys.executable, "-m", f"benchmarks.{args.module}"], env=env)


if __name__ == "__main__":
    sys.exit(main())
