"""Benchmarks of govnotify on the real services (RabbitMQ, PostgreSQL, a private Tansu).

Run all with ``python -m benchmarks`` (one table at the end) or one with
``python -m benchmarks.bench_publish`` / ``bench_relay`` / ``bench_pipeline``.
``python -m benchmarks.profile_stages`` profiles each stage with py-spy and counts its SQL
(docs/perf/where-the-time-goes.md); ``python -m benchmarks.at_hour 23:00 bench_pipeline`` runs a
benchmark with every process's wall clock moved to that hour (the figures must not change).

Rules: figures are printed as ratios against a baseline measured in the same run (never absolute
timed assertions, never part of the test suite); every process started is stopped by pid, also on
failure; every connection goes to loopback; every loop is bounded in count and in time.
"""
