"""The event contract: envelope and payload models, phone numbers, license categories.

:func:`parse_event` is the one gate every incoming event passes; it returns a validated
:class:`Event` or raises :class:`EventRejected`. JSON Schema files for upstream systems are
generated into ``schemas/jsonschema/`` by ``python -m schemas.jsonschema_gen``.
"""

from __future__ import annotations

from schemas.categories import CATEGORY_CODES, LicenseCategory, load_categories
from schemas.errors import REJECT_REASONS, EventRejected
from schemas.events import (
    EVENT_REGISTRY,
    MAX_EVENT_BYTES,
    Applicant,
    CallbackCompletedPayload,
    CaseCompletedPayload,
    CasePayload,
    Envelope,
    EvaluationPayload,
    Event,
    EventSpec,
    GreenChannelAckPayload,
    LicensePayload,
    LicenseRevokedPayload,
    ServicePoint,
    Steward,
    event_types,
    make_event,
    parse_event,
    register,
    spec_for,
)
from schemas.phone import MobileNumber, normalize_mobile

__all__ = [
    "CATEGORY_CODES",
    "EVENT_REGISTRY",
    "MAX_EVENT_BYTES",
    "REJECT_REASONS",
    "Applicant",
    "CallbackCompletedPayload",
    "CaseCompletedPayload",
    "CasePayload",
    "Envelope",
    "EvaluationPayload",
    "Event",
    "EventRejected",
    "EventSpec",
    "GreenChannelAckPayload",
    "LicenseCategory",
    "LicensePayload",
    "LicenseRevokedPayload",
    "MobileNumber",
    "ServicePoint",
    "Steward",
    "event_types",
    "load_categories",
    "make_event",
    "normalize_mobile",
    "parse_event",
    "register",
    "spec_for",
]
