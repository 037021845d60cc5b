"""Scaling the pipeline on one host: more worker processes, then a second stream.

The pipeline benchmark's load and test (``bench_pipeline``: ``generate_registry(N)`` published
with ``publish_many``, timed from the first publish until drained), three times in one
environment, the components added between batches, each batch its own licenses (same
generator, same seed, another prefix):

1. one relay, one stream, one worker process (``worker_threads`` threads): the reference;
2. the worker restarted with two processes (``govnotify worker --processes 2``);
3. a second ``govnotify stream`` (its own metrics port), once both streams are ready: the
   group gave each half of every topic's partitions (``kafka_partitions``, 4 in the benchmark
   settings: two each; the split of the events between the two is printed).

Each step is warmed up (one event all the way through) before its batch. Every figure is a
ratio to step 1's, measured a minute earlier on the same machine. The later batches meet a
registry and journal a batch or two larger than the first: a bias against them, small at
these sizes.

    python -m benchmarks.bench_scaling [--licenses N]
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks.bench_pipeline import (
    STARTUP_DEADLINE_S,
    Drained,
    Pipeline,
    make_batch,
    push,
    settings_label,
    start_pipeline,
    stream_events,
)
from benchmarks.common import BenchEnv, BenchError, Row, bench_env, child_env, run_main
from infra.processes import ProcessGroup

#: Licenses per step (about 3% more events): each configuration runs for several seconds (at
#: 3,000 licenses a step lasted ~1.5 s, mostly the start and the drain of the stages).
N_LICENSES = 15_000


def _step(pipe: Pipeline, n: int, prefix: str) -> tuple[Drained, list[float], str]:
    """One batch; (result, events each stream counted, the settings)."""
    s = pipe.env.settings
    before = [stream_events(s, [p]) for p in pipe.stream_ports]
    result = push(pipe, make_batch(s, n, prefix))
    split = [stream_events(s, [p]) - b for p, b in zip(pipe.stream_ports, before, strict=True)]
    return result, split, settings_label(s, pipe)


def run(env: BenchEnv, n_licenses: int = N_LICENSES) -> list[Row]:
    s = env.settings
    if s.kafka_partitions < 2:
        raise BenchError(f"two streams need two partitions a topic, not {s.kafka_partitions}")
    group = ProcessGroup(env=child_env(s), log_dir=env.tmp / "logs")
    steps: list[tuple[str, Drained, list[float], str]] = []
    try:
        pipe = start_pipeline(env, group, worker_processes=1, streams=1)
        steps.append(("1 worker proc, 1 stream", *_step(pipe, n_licenses, "LSCA")))

        pipe.start_worker(2)
        pipe.wait_ready(time.monotonic() + STARTUP_DEADLINE_S)
        steps.append(("2 worker procs, 1 stream", *_step(pipe, n_licenses, "LSCB")))

        pipe.start_stream()
        pipe.wait_ready(time.monotonic() + STARTUP_DEADLINE_S)
        steps.append(("2 worker procs, 2 streams", *_step(pipe, n_licenses, "LSCC")))
    finally:
        group.stop_all()

    for name, result, split, label in steps:
        shares = " + ".join(f"{x:.0f}" for x in split)
        print(
            f"  scaling: {name}: {result.events} events drained in {result.elapsed_s:.2f}s "
            f"({result.rate:,.0f}/s; stream done at {result.stream_s:.2f}s; events per stream "
            f"{shares}); {label}"
        )
    if len(steps[-1][2]) == 2 and min(steps[-1][2]) <= 0:
        raise BenchError(f"the second stream processed nothing: split {steps[-1][2]}")
    reference = steps[0][1].rate
    ref_name = steps[0][0]
    return [
        Row(
            "scaling",
            f"events/s (N={result.events})",
            f"{name} (1 relay)",
            result.rate,
            ref_name,
            reference,
        )
        for name, result, _split, _label in steps
    ]


def bench(_rows: list[Row], n_licenses: int = N_LICENSES) -> list[Row]:
    with bench_env("scaling") as env:
        return run(env, n_licenses)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--licenses", type=int, default=N_LICENSES)
    args = p.parse_args()
    return run_main([("scaling", lambda rows: bench(rows, args.licenses))])


if __name__ == "__main__":
    sys.exit(main())
