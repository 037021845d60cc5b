"""``python -m benchmarks``: every benchmark in turn, one table at the end.

Each benchmark gets its own Tansu, namespace and database (removed afterwards); the pipeline
benchmark measures its raw-pika baseline itself and also sets its figure beside the relay
benchmark's from this run; the stream benchmark runs ``govnotify stream`` alone on license
events the relay put in Kafka, beside a bare aiokafka consumer of them; the worker benchmark
runs a worker alone on a backlog (sandbox, then the real twilio client against the loopback
fake), beside a no-op dramatiq and the fake alone; the scaling benchmark runs the pipeline's
load with 1 then 2 worker processes, then 2 streams (a smaller load than the pipeline
benchmark's, to keep ``make bench`` short); the green-channel benchmark measures its own mix's
capacity, then runs two pipelines of its own (fast path on, then off) at half of it; the
callbacks benchmark runs ``govnotify api`` against a trivial waitress app of its own; the
recovery benchmark loads a registry of a million licenses.
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
    bench_scaling,
    bench_stream,
    bench_worker,
)
from benchmarks.common import Row, bench_env, run_main


def _publish(_rows: list[Row]) -> list[Row]:
    with bench_env("publish") as env:
        return bench_publish.run(env)


def _relay(_rows: list[Row]) -> list[Row]:
    with bench_env("relay") as env:
        return bench_relay.run(env)


#: ``make bench`` sizes: each stage runs for seconds, not a second (a second is mostly its start
#: and its drain), without making the whole run much longer than ten minutes.
WORKER_SMS, WORKER_TWILIO_SMS, SCALING_LICENSES, STREAM_EVENTS = 3000, 3000, 10_000, 20_000


def _stream(_rows: list[Row]) -> list[Row]:
    with bench_env("stream") as env:
        return bench_stream.run(env, STREAM_EVENTS)


def _worker(rows: list[Row]) -> list[Row]:
    return bench_worker.bench(rows, WORKER_SMS, WORKER_TWILIO_SMS)


def _scaling(rows: list[Row]) -> list[Row]:
    return bench_scaling.bench(rows, SCALING_LICENSES)


def main() -> int:
    return run_main(
        [
            ("publish", _publish),
            ("relay", _relay),
            ("stream", _stream),
            ("pipeline", bench_pipeline.bench),
            ("worker", _worker),
            ("scaling", _scaling),
            ("green_channel", bench_green_channel.bench),
            ("callbacks", bench_callbacks.bench),
            ("recovery", bench_recovery.bench),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
