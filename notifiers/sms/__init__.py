"""SMS to citizens: the message, the receipt, and :class:`SMSNotifier`, every SMS provider's base.

Providers, one module each (in the manner of GOV.UK Notify's ``clients/sms/``):
:mod:`notifiers.sms.twilio`, :mod:`notifiers.sms.gateway` (a mainland HTTP gateway) and
:mod:`notifiers.sms.sandbox` (the embedded default). :mod:`notifiers.sms.text` holds the text
rules (segments, the no-URL rule). Each provider declares its limits and its own status words
(:attr:`SMSNotifier.status_words`); :meth:`SMSNotifier.status_of` turns a word it reports into
our :class:`~schemas.models.NotificationStatus`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from infra.logging import mask_mobile
from notifiers.base import E164_PATTERN, Notifier
from notifiers.errors import (
    DeliveryError,
    InvalidRecipientError,
    LookupUnsupportedError,
    MessageRejectedError,
    NotifierConfigError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnknownStatusWordError,
)
from notifiers.sms.text import contains_url
from schemas.models import NotificationStatus

__all__ = ["OutboundMessage", "ProviderStatus", "Receipt", "SMSNotifier"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboundMessage:
    """One message to one recipient, ready to hand to a provider."""

    #: Our id for the notification; carried into logs and provider lookups instead of the number.
    notification_id: str
    #: Recipient in E.164, e.g. ``+8613800138000``.
    to: str
    #: Final text, signature and opt-out hint included.
    body: str
    #: Where the provider should POST delivery status, when we want callbacks.
    status_callback: str | None = None
    #: The flow it belongs to (routing picks providers per flow); "" outside a flow.
    flow: str = ""
    #: Opt-out category; a permanent failure suppresses the number for it.
    category: str = ""
    #: Template name and parameters, for providers that send by approved template id.
    template: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Receipt:
    """What the provider told us when it accepted a message."""

    provider: str
    #: The provider's id for the message (Twilio ``SM…`` sid); status callbacks refer to it.
    provider_ref: str
    #: "queued" | "accepted" | "sent" | "delivered".
    status: str
    segments: int


class ProviderStatus(str):
    """A provider's own status word for one message (``"delivered"``), with its error code.

    A ``str``, so code that only wants the word can compare it directly; ``error_code`` carries
    what decides permanent against temporary failure (Twilio ``ErrorCode`` ``"30005"``, a
    gateway code). What every notifier's ``fetch_status`` returns.
    """

    error_code: str | None

    def __new__(cls, status: str, error_code: str | int | None = None) -> ProviderStatus:
        word = super().__new__(cls, status)
        word.error_code = None if error_code in (None, "") else str(error_code)
        return word

    def __repr__(self) -> str:
        return f"ProviderStatus({str(self)!r}, error_code={self.error_code!r})"


class SMSNotifier(Notifier[OutboundMessage, Receipt]):
    """An SMS provider. Subclasses implement :meth:`_send` and set the limits below.

    :meth:`send` checks what every SMS provider would refuse (empty body, too long, a link, a
    number that is not E.164) before any network call.
    """

    channel: ClassVar[str] = "sms"
    #: Longest accepted body, in characters (Twilio to mainland China: 500).
    body_maxlen: ClassVar[int]
    #: Characters in one segment, and per segment once split (UCS-2, since our text is Chinese).
    segment_single: ClassVar[int] = 70
    segment_multi: ClassVar[int] = 67
    #: The provider's status words (callbacks, reports, ``fetch_status``) → ours; ``None``: a
    #: failure, decided by the error code (:meth:`status_error`). Empty: it reports none.
    status_words: ClassVar[Mapping[str, NotificationStatus | None]] = {}
    #: Error codes meaning "this number has had its messages for today" (the carrier's daily
    #: limit per recipient): the message is held until the next day, not retried now.
    daily_limit_codes: ClassVar[frozenset[str]] = frozenset()

    def _validate(self, message: OutboundMessage) -> None:
        if not message.body or not message.body.strip():
            raise MessageRejectedError("message body is empty", provider=self.name)
        if len(message.body) > self.body_maxlen:
            raise MessageRejectedError(
                f"message body is {len(message.body)} characters; "
                f"{self.name} accepts at most {self.body_maxlen}",
                provider=self.name,
            )
        if contains_url(message.body):
            raise MessageRejectedError(
                "message body contains a URL; links are refused in SMS to mainland China",
                provider=self.name,
            )
        if not E164_PATTERN.fullmatch(message.to):
            raise InvalidRecipientError(
                f"recipient {mask_mobile(message.to)} is not an E.164 number", provider=self.name
            )

    def _log_sent(self, message: OutboundMessage, receipt: Receipt) -> None:
        # DEBUG: the worker logs what it recorded, a line per batch with every id (a line per
        # message here was an eighth of a worker's CPU at a thousand SMS a second).
        _log.debug(
            "sent notification %s to %s via %s: ref=%s status=%s segments=%d",
            message.notification_id,
            mask_mobile(message.to),
            self.name,
            receipt.provider_ref,
            receipt.status,
            receipt.segments,
        )

    def lookup(
        self, to: str, body: str, since: dt.datetime, *, notification_id: str | None = None
    ) -> str | None:
        """The provider's reference of a message with this recipient and body sent since ``since``.

        Used by the sweep to learn whether an ambiguous send (timeout, crash after the request)
        went out, so it is never sent twice. ``notification_id`` is our id of the message:
        providers that store it (the gateway's ``out_id``) match on it exactly; the others
        match on recipient and body and ignore it.

        Raises:
          LookupUnsupportedError: the provider cannot be asked.
        """
        raise LookupUnsupportedError(
            f"{self.name} cannot look up sent messages", provider=self.name
        )

    # ---- the provider's status words ------------------------------------------------------------
    @classmethod
    def status_word(cls, provider_status: str) -> str:
        """``provider_status`` spelled as in :attr:`status_words` (Twilio's are lower case)."""
        return provider_status.lower()

    @classmethod
    def status_error(cls, error_code: str | None) -> type[DeliveryError]:
        """The error a failure reported with ``error_code`` stands for; by default transient."""
        return TransientDeliveryError

    @classmethod
    def status_of(
        cls, provider_status: str, error_code: str | None = None
    ) -> tuple[NotificationStatus, type[DeliveryError] | None]:
        """Our status for a word this provider reports, and for a failure the error it stands for.

        A failure is ``permanent-failure`` when its error is about the number or the content,
        ``technical-failure`` when it is our account or settings, else ``temporary-failure``.

        Raises:
          UnknownStatusWordError: the provider has no such word (or reports no statuses).
        """
        word = cls.status_word(provider_status)
        if word not in cls.status_words:
            raise UnknownStatusWordError(
                f"{cls.name} status {provider_status[:32]!r} is not known", provider=cls.name
            )
        status = cls.status_words[word]
        if status is not None:
            return status, None
        error = cls.status_error(error_code)
        if issubclass(error, PermanentDeliveryError):
            return NotificationStatus.PERMANENT_FAILURE, error
        if issubclass(error, NotifierConfigError):
            return NotificationStatus.TECHNICAL_FAILURE, error
        return NotificationStatus.TEMPORARY_FAILURE, error
