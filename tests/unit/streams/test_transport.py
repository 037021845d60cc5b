"""streams.transport: the stream's Kafka consumer waits GOVNOTIFY_KAFKA_FETCH_MAX_WAIT_MS at most
for a fetch, not the 1,500 ms Faust fixes (on Tansu that wait was the stream's idle latency;
benchmarks/bench_green_channel.py measures the effect: the stream-only alert path)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from infra.settings import load_settings
from streams.app import create_app
from streams.transport import Transport


@pytest.mark.parametrize("wait_ms", [100, 250, 1500])
def test_the_stream_consumer_fetches_with_the_configured_wait(tmp_path: Path, wait_ms: int) -> None:
    # Given the stream's app for settings with a fetch wait
    settings = load_settings(
        namespace="ttransport", data_dir=tmp_path, kafka_fetch_max_wait_ms=wait_ms
    )
    app = create_app(settings)

    async def consumer_wait() -> int:
        # When the worker consumer Faust starts is built (not started: no broker is needed)
        consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    try:
        waited = asyncio.run(consumer_wait())
    finally:
        # The loops Faust made: the app's, and the consumer thread's (never started here).
        app.consumer._thread.thread_loop.close()
        app.loop.close()

    # Then the app runs on our transport, and its consumer waits that long, not Faust's 1,500
    assert isinstance(app.transport, Transport)
    assert waited == wait_ms


def test_a_wait_below_one_ms_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Transport("kafka://127.0.0.1:9092", object(), fetch_max_wait_ms=0)
