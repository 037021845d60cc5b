"""Each SMS provider maps its own status words (as GOV.UK Notify's clients/sms/*.py do).

The words are declared on the provider's class; the status ledger asks the class through the
registry (``workers.status.map_status``), so both must give the same answer. Table-driven: one
row per word (and error code) a provider reports.
"""

from __future__ import annotations

import pickle

import pytest

from notifiers import registry
from notifiers.errors import (
    DeliveryError,
    InvalidRecipientError,
    MessageRejectedError,
    NotifierConfigError,
    RecipientUnsubscribedError,
    TransientDeliveryError,
    UnknownStatusWordError,
)
from notifiers.sms.gateway import REPORT_STATUSES, HttpGatewayNotifier
from notifiers.sms.sandbox import SandboxNotifier
from notifiers.sms.twilio import TwilioSMSNotifier
from schemas.models import NotificationStatus as S
from workers.status import UnknownStatusError, map_status

#: (provider, its word, error code, our status, the error a failure stands for)
CASES: list[tuple[str, str, str | None, S, type[DeliveryError] | None]] = [
    # Twilio: lower-case words; any word from Twilio is past our `sending`
    ("twilio", "accepted", None, S.SENT, None),
    ("twilio", "scheduled", None, S.SENT, None),
    ("twilio", "queued", None, S.SENT, None),
    ("twilio", "sending", None, S.SENT, None),
    ("twilio", "sent", None, S.SENT, None),
    ("twilio", "delivered", None, S.DELIVERED, None),
    ("twilio", "DELIVERED", None, S.DELIVERED, None),
    ("twilio", "read", None, S.DELIVERED, None),
    ("twilio", "canceled", None, S.CANCELLED, None),
    ("twilio", "undelivered", "30005", S.PERMANENT_FAILURE, InvalidRecipientError),
    ("twilio", "failed", "21610", S.PERMANENT_FAILURE, RecipientUnsubscribedError),
    ("twilio", "undelivered", "30007", S.PERMANENT_FAILURE, MessageRejectedError),
    ("twilio", "failed", "21408", S.TECHNICAL_FAILURE, NotifierConfigError),
    ("twilio", "undelivered", "30003", S.TEMPORARY_FAILURE, TransientDeliveryError),
    ("twilio", "failed", None, S.TEMPORARY_FAILURE, TransientDeliveryError),
    ("twilio", "failed", "not-a-number", S.TEMPORARY_FAILURE, TransientDeliveryError),
    # The gateway: upper-case words; an unlisted code in a report is temporary
    ("gateway", "SENT", None, S.SENT, None),
    ("gateway", "DELIVERED", None, S.DELIVERED, None),
    ("gateway", "delivered", None, S.DELIVERED, None),
    ("gateway", "FAILED", "isv.MOBILE_NUMBER_ILLEGAL", S.PERMANENT_FAILURE, InvalidRecipientError),
    ("gateway", "FAILED", "isv.SMS_TEMPLATE_ILLEGAL", S.TECHNICAL_FAILURE, NotifierConfigError),
    ("gateway", "FAILED", "UNDELIV", S.TEMPORARY_FAILURE, TransientDeliveryError),
    ("gateway", "FAILED", None, S.TEMPORARY_FAILURE, TransientDeliveryError),
]


@pytest.mark.parametrize(("provider", "word", "code", "status", "error"), CASES)
def test_each_provider_maps_its_own_words(
    provider: str, word: str, code: str | None, status: S, error: type[DeliveryError] | None
) -> None:
    # Given the provider's class, as the registry names it
    cls = registry.provider_class(provider)

    # When its word is read, by the class and by the status ledger
    by_class = cls.status_of(word, code)
    by_ledger = map_status(provider, word, code)

    # Then both give our status, and for a failure the error it stands for
    assert by_class == by_ledger == (status, error)


def test_the_words_are_declared_on_the_provider_classes() -> None:
    # Given / When / Then
    assert registry.provider_class("twilio") is TwilioSMSNotifier
    assert registry.provider_class("gateway") is HttpGatewayNotifier
    assert registry.provider_class("sandbox") is SandboxNotifier
    assert set(HttpGatewayNotifier.status_words) == REPORT_STATUSES
    assert "canceled" in TwilioSMSNotifier.status_words
    assert SandboxNotifier.status_words == {}
    assert sorted(registry.names()) == sorted(registry.PROVIDER_CLASSES)


def test_a_word_the_provider_does_not_know_is_refused() -> None:
    # When / Then: the class raises its typed error, the ledger its own
    with pytest.raises(UnknownStatusWordError, match="twilio status 'lost' is not known"):
        TwilioSMSNotifier.status_of("lost")
    with pytest.raises(UnknownStatusError, match="twilio status 'lost' is not known"):
        map_status("twilio", "lost")
    with pytest.raises(UnknownStatusError, match="gateway status 'QUEUED' is not known"):
        map_status("gateway", "QUEUED")


@pytest.mark.parametrize("provider", ["sandbox", "routing", "pigeon", ""])
def test_a_provider_without_status_words_has_no_mapping(provider: str) -> None:
    # When / Then
    with pytest.raises(UnknownStatusError, match="no status mapping for provider"):
        map_status(provider, "delivered")


def test_registry_refuses_an_unknown_provider_class() -> None:
    # When / Then
    with pytest.raises(KeyError, match="pigeon"):
        registry.provider_class("pigeon")


def test_the_unknown_word_error_survives_pickling() -> None:
    # Given
    error = UnknownStatusWordError("gateway status 'X' is not known", provider="gateway")

    # When
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object

    # Then
    assert (type(copy), str(copy), copy.provider) == (UnknownStatusWordError, str(error), "gateway")
