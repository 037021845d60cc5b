"""The one error an incoming event can fail with, and its closed set of reasons.

Upstream systems get this reason back (or find it on the dead-letter record), so the set is part
of the contract: add a reason only together with the dead-letter and metric handling for it.
"""

from __future__ import annotations

from schemas.escaping import escape_controls
from schemas.pii import mask_pii

__all__ = ["MAX_DETAIL_CHARS", "REJECT_REASONS", "EventRejected"]

#: Every reason an event can be rejected for; also the ``reason`` label of the rejection metric.
REJECT_REASONS: tuple[str, ...] = (
    "oversize",
    "malformed_json",
    "unknown_type",
    "unknown_version",
    "schema_violation",
    # The id of an event accepted before, now with other content (the ingest journal keeps
    # the first; an upstream reusing ids would otherwise have its second event lost unseen).
    "duplicate_event_id",
    # The publisher may not send it: an AMQP user the sources registry does not know, a
    # ``source`` that is not that user's, a type the source may not send, or a routing key
    # other than the event type (producers.relay; infra.sources.SourceRegistry.authorize).
    "unauthorised",
    # Text a citizen's SMS or a staff message must not carry (control or bidi characters,
    # links in SMS): refused at ingest rather than sent.
    "unsafe_text",
    # An ``occurred_at`` later than now plus the allowed clock skew: it would outrank every
    # real event of its entity (newer wins) and pin that entity's state.
    "occurred_in_future",
)

#: Longest ``detail`` kept; dead-letter headers and metric exemplars stay small.
MAX_DETAIL_CHARS = 500


def _rebuild(
    reason: str, detail: str, event_type: str | None, event_id: str | None
) -> EventRejected:
    return EventRejected(reason, detail, event_type=event_type, event_id=event_id)


class EventRejected(Exception):
    """Raised when an incoming event cannot be accepted; carries a reason code and a detail."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        event_type: str | None = None,
        event_id: str | None = None,
    ) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; expected one of {REJECT_REASONS}")
        # The detail travels to logs, dead letters, headers and back to the sender, and may quote
        # what the sender chose (a field name, an id): mask and escape here, once, so no caller
        # can forget to.
        detail = escape_controls(mask_pii(detail))
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 1] + "…"
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        self.event_type = event_type
        self.event_id = event_id

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments are lost by Exception's default pickling; workers pickle errors.
        return (_rebuild, (self.reason, self.detail, self.event_type, self.event_id))
