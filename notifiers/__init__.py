"""Notifiers: deliver one rendered message through a provider, or raise a typed error.

Every provider is a :class:`~notifiers.base.Notifier`: SMS providers in :mod:`notifiers.sms`
(Twilio, the mainland gateway, the sandbox), staff ones in :mod:`notifiers.staff` (webhooks and
robots, e-mail, the staff sandbox). ``notifier_from_settings(settings)`` routes SMS over the
configured providers, the sandbox when none is; ``staff_notifier(key, hook, settings)`` builds
the notifier of one staff-directory entry.
"""

from __future__ import annotations

from notifiers.base import Notifier
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
from notifiers.registry import (
    get_factory,
    notifier_from_settings,
    provider_class,
    register,
    staff_notifier,
)
from notifiers.sms import OutboundMessage, Receipt, SMSNotifier
from notifiers.sms.sandbox import SandboxNotifier, read_outbox
from notifiers.staff import StaffMessage

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
    "SMSNotifier",
    "SandboxNotifier",
    "StaffMessage",
    "TransientDeliveryError",
    "UnsupportedRecipientError",
    "get_factory",
    "notifier_from_settings",
    "provider_class",
    "read_outbox",
    "register",
    "staff_notifier",
]
