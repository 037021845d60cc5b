"""Replaying ingest dead letters: the event bytes go back to the exchange, as they were.

The relay rejected the event (bad JSON, unknown type, schema); a replay publishes the same bytes
again for the relay to validate once more, so a rejection that still holds is the same letter
again (count up, ``open``). Registered with :mod:`infra.deadletters` as this module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra.deadletters import register_replayer
from infra.sources import HTTP_SOURCE_HEADER, REPLAY_OF_HEADER
from producers.rabbitmq import Publisher, routing_key_of
from schemas.models import DeadLetter

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["replay_ingest"]


def replay_ingest(settings: Settings, letter: DeadLetter) -> str:
    """Publish the event bytes again, as they were, for the relay to validate once more.

    govnotify publishes it with its own RabbitMQ user, on behalf of the letter's first
    publisher (:data:`~infra.sources.REPLAY_OF_HEADER`) and HTTP source: the relay judges the
    replay as that publisher's event, so a replay neither gains nor loses a right.
    """
    routing_key = letter.event_type or routing_key_of(letter.raw)
    headers: dict[str, str] = {}
    if letter.publisher:
        headers[REPLAY_OF_HEADER] = letter.publisher
    if letter.http_source:
        headers[HTTP_SOURCE_HEADER] = letter.http_source
    with Publisher.from_settings(settings) as publisher:
        publisher.publish_raw(
            bytes(letter.raw), routing_key, message_id=letter.event_id, headers=headers or None
        )
    return f"event republished to {settings.exchange} as {routing_key}"


register_replayer("ingest", replay_ingest)
