"""The stream's Kafka group session timeout (GOVNOTIFY_KAFKA_SESSION_TIMEOUT_S): a group join
waits about half of it, and Tansu keeps a member that left until its session ends, so a
restarted stream on Tansu waited for two joins at 10 s (8–22 s before it was ready)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from infra.settings import SettingsError, load_settings
from streams.app import create_app


def _consumer_timeouts(settings) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(session, heartbeat) in ms of the worker consumer Faust builds for ``settings``' app."""
    app = create_app(settings)

    async def build() -> tuple[int, int]:
        # Built, not started: no broker is needed.
        consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        try:
            return int(consumer._session_timeout_ms), int(consumer._heartbeat_interval_ms)
        finally:
            await consumer.stop()

    try:
        return asyncio.run(build())
    finally:
        app.consumer._thread.thread_loop.close()
        app.loop.close()


@pytest.mark.parametrize(
    ("kind", "setting", "session_ms"),
    [
        ("tansu", None, 4000),  # the embedded broker: quick (re)joins
        ("kafka", None, 10000),  # a real cluster refuses less than 6 s by default
        ("tansu", 12.0, 12000),
        ("kafka", 30.0, 30000),
    ],
)
def test_the_stream_consumer_takes_the_session_timeout_of_its_broker(
    tmp_path: Path, kind: str, setting: float | None, session_ms: int
) -> None:
    # Given settings for a broker kind, with or without the session timeout set
    settings = load_settings(
        namespace="tgroup",
        data_dir=tmp_path,
        kafka_broker_kind=kind,
        kafka_session_timeout_s=setting,
    )

    # When the stream's consumer is built
    session, heartbeat = _consumer_timeouts(settings)

    # Then it has that session timeout, and heartbeats three times within it
    assert session == session_ms
    assert heartbeat == session_ms // 3


@pytest.mark.parametrize("bad", [0, 0.5, -1, 301])
def test_a_session_timeout_out_of_range_is_refused(tmp_path: Path, bad: float) -> None:
    with pytest.raises(SettingsError, match="GOVNOTIFY_KAFKA_SESSION_TIMEOUT_S"):
        load_settings(namespace="tgroup", data_dir=tmp_path, kafka_session_timeout_s=bad)
