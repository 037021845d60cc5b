"""Replaying ingest dead letters: the event bytes go back to the exchange, as they were.

The relay rejected the event (bad JSON, unknown type, schema); a replay publishes the same bytes
again for the relay to validate once more, so a rejection that still holds is the same letter
again (count up, ``open``). Registered with :mod:`infra.deadletters` as this module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra.deadletters import register_replayer
from producers.rabbitmq import Publisher, routing_key_of
from schemas.models import DeadLetter

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["replay_ingest"]


def replay_ingest(settings: Settings, letter: DeadLetter) -> str:
    """Publish the event bytes again, as they were, for the relay to validate once more."""
    routing_key = letter.event_type or routing_key_of(letter.raw)
    with Publisher.from_settings(settings) as publisher:
        publisher.publish_raw(bytes(letter.raw), routing_key, message_id=letter.event_id)
    return f"event republished to {settings.exchange} as {routing_key}"


register_replayer("ingest", replay_ingest)
