"""Notifiers: deliver one rendered message through a provider, or raise a typed error.

``notifier_from_settings(settings)`` gives Twilio when its credentials are set and the sandbox
otherwise. ``notifiers.twilio_sms`` is not imported here: the twilio client is slow to import
and only needed when Twilio is configured.
"""

from __future__ import annotations

from notifiers.base import Notifier, OutboundMessage, Receipt
from notifiers.errors import (
    DeliveryError,
    DeliveryTimeoutError,
    InvalidRecipientError,
    MessageRejectedError,
    NotifierConfigError,
    PermanentDeliveryError,
    ProviderUnavailableError,
    RateLimitedError,
    RecipientUnsubscribedError,
    TransientDeliveryError,
    UnsupportedRecipientError,
)
from notifiers.registry import get_factory, notifier_from_settings, register
from notifiers.sandbox import SandboxNotifier, read_outbox

__all__ = [
    "DeliveryError",
    "DeliveryTimeoutError",
    "InvalidRecipientError",
    "MessageRejectedError",
    "Notifier",
    "NotifierConfigError",
    "OutboundMessage",
    "PermanentDeliveryError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "Receipt",
    "RecipientUnsubscribedError",
    "SandboxNotifier",
    "TransientDeliveryError",
    "UnsupportedRecipientError",
    "get_factory",
    "notifier_from_settings",
    "read_outbox",
    "register",
]
