"""Benchmarks of govnotify on the real services (RabbitMQ, PostgreSQL, a private Tansu).

Run all with ``python -m benchmarks`` (one table at the end) or one with
``python -m benchmarks.bench_publish`` / ``bench_relay`` / ``bench_pipeline``.

Rules: figures are printed as ratios against a baseline measured in the same run (never absolute
timed assertions, never part of the test suite); every process started is stopped by pid, also on
failure; every connection goes to loopback; every loop is bounded in count and in time.
"""
