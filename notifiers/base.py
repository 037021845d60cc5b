"""The notifier interface: one message in, a :class:`Receipt` out, or a typed error.

Each provider is a :class:`Notifier` subclass whose limits are class attributes (in the manner
of apprise). :meth:`Notifier.send` checks what every provider would refuse anyway (empty body,
too long, a link, a number that is not E.164) before any network call, so a bad message fails
fast and permanently instead of burning a retry budget.
"""

from __future__ import annotations

import abc
import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, final

from infra.logging import mask_mobile
from notifiers.errors import InvalidRecipientError, LookupUnsupportedError, MessageRejectedError
from notifiers.sms import contains_url

__all__ = ["E164_PATTERN", "Notifier", "OutboundMessage", "ProviderStatus", "Receipt"]

_log = logging.getLogger(__name__)

#: ``+`` then country code and subscriber number, 7 to 15 digits (ITU-T E.164); use fullmatch.
E164_PATTERN = re.compile(r"\+[1-9][0-9]{6,14}")


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


class Notifier(abc.ABC):
    """A delivery channel. Subclasses implement :meth:`_send` and set the limits below."""

    #: Registry name, e.g. "twilio", "sandbox".
    name: ClassVar[str]
    #: "sms" for every notifier in this package.
    channel: ClassVar[str]
    #: Longest accepted body, in characters (Twilio to mainland China: 500).
    body_maxlen: ClassVar[int]
    #: Characters in one segment, and per segment once split (UCS-2, since our text is Chinese).
    segment_single: ClassVar[int] = 70
    segment_multi: ClassVar[int] = 67
    #: Highest request rate the provider accepts; ``None`` when it queues for us.
    request_rate_per_sec: ClassVar[float | None] = None

    @final
    def send(self, message: OutboundMessage) -> Receipt:
        """Validate ``message`` and hand it to the provider.

        Raises:
          MessageRejectedError: empty body, longer than ``body_maxlen``, or containing a URL.
          InvalidRecipientError: ``message.to`` is not an E.164 number.
          DeliveryError: any other failure, as a subclass that says whether to retry.

        Returns:
          The provider's :class:`Receipt`.
        """
        self._validate(message)
        receipt = self._send(message)
        _log.info(
            "sent notification %s to %s via %s: ref=%s status=%s segments=%d",
            message.notification_id,
            mask_mobile(message.to),
            self.name,
            receipt.provider_ref,
            receipt.status,
            receipt.segments,
        )
        return receipt

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

    @abc.abstractmethod
    def _send(self, message: OutboundMessage) -> Receipt:
        """Deliver an already validated message, or raise a :class:`DeliveryError`."""

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

    def close(self) -> None:  # noqa: B027 - optional hook; most notifiers hold nothing open
        """Release connections; the notifier must not be used afterwards."""

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
