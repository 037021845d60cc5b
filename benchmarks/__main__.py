"""``python -m benchmarks``: every benchmark in turn, one table at the end.

Each benchmark gets its own Tansu, namespace and database (removed afterwards); the pipeline
benchmark uses the relay benchmark's figure from this run as its baseline; the green-channel
benchmark runs two pipelines of its own (fast path on, then off); the callbacks benchmark runs
``govnotify api`` against a trivial waitress app of its own; the recovery benchmark loads a
registry of a million licenses.
"""

from __future__ import annotations

import sys

from benchmarks import (
    bench_callbacks,
    bench_green_channel,
    bench_pipeline,
    bench_publish,
    bench_recovery,
    bench_relay,
)
from benchmarks.common import Row, bench_env, run_main


def _publish(_rows: list[Row]) -> list[Row]:
    with bench_env("publish") as env:
        return bench_publish.run(env)


def _relay(_rows: list[Row]) -> list[Row]:
    with bench_env("relay") as env:
        return bench_relay.run(env)


def main() -> int:
    return run_main(
        [
            ("publish", _publish),
            ("relay", _relay),
            ("pipeline", bench_pipeline.bench),
            ("green_channel", bench_green_channel.bench),
            ("callbacks", bench_callbacks.bench),
            ("recovery", bench_recovery.bench),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
